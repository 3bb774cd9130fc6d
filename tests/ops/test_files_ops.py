"""File/directory state (facts/files.py), the ops reading it from the host snapshot (operations/files.py), and\nthe snapshot seam: read once, read again only after an op changed the host."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from pyinfra.context import ctx_host, ctx_state

from gpu_llm.facts import snapshot
from gpu_llm.facts.files import FileState, FileStates
from gpu_llm.operations import files as gpu_files
from gpu_llm.operations import packages
from tests.ops.opkit import FakeHost, FakeState, Reads, _text, run

BODY = b"blacklist nouveau\n"
SHA = hashlib.sha256(BODY).hexdigest()
DEST = "/etc/modprobe.d/x.conf"


def file(path: str, mode: str = "644", sha: str = SHA, user: str = "root") -> list[str]:
    """FileStates' output for a regular file: its stat line and its sha256sum line."""
    return [f"{path}|regular file|{mode}|{user}|{user}", f"{sha}  {path}"]


def directory(path: str, mode: str = "755", user: str = "root") -> list[str]:
    return [f"{path}|directory|{mode}|{user}|{user}"]


def test_fact_command_reads_files_dirs_and_absent_paths_in_one_shell(tmp_path: Path) -> None:
    f = tmp_path / "f.conf"
    f.write_bytes(BODY)
    f.chmod(0o640)
    (tmp_path / "d").mkdir(mode=0o750)
    paths = (str(f), str(tmp_path / "d"), str(tmp_path / "none"), str(tmp_path / "no/dir/x"), "/dev/null")
    out = subprocess.run(["sh", "-c", FileStates().command(paths)], capture_output=True, text=True, check=True)
    got = FileStates().process(out.stdout.splitlines())
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    assert got[str(f)] == FileState("file", 640, user, got[str(f)].group, SHA)
    assert got[str(tmp_path / "d")].kind == "dir" and got[str(tmp_path / "d")].mode == 750
    assert got[str(tmp_path / "none")] == FileState("absent", parent_dir=True)
    assert got[str(tmp_path / "no/dir/x")] == FileState("absent", parent_dir=False)
    assert got["/dev/null"].kind == "other"


def test_put_is_a_noop_when_content_and_mode_match() -> None:
    r = run(gpu_files.put, {"FileStates": file(DEST)}, content=BODY, dest=DEST, mode="644")
    assert r.commands == [] and r.noops == [f"{DEST} is up to date"]


def test_put_uploads_changed_content_and_sets_the_mode() -> None:
    r = run(gpu_files.put, {"FileStates": file(DEST, sha="0" * 64)}, content=BODY, dest=DEST,
            mode="644")
    assert len(r.commands) == 2 and "FileUploadCommand" in r.commands[0] and r.commands[1] == f"chmod 644 {DEST}"


def test_put_only_fixes_the_mode_of_right_content() -> None:
    r = run(gpu_files.put, {"FileStates": file(DEST, mode="600")}, content=BODY, dest=DEST, mode="644")
    assert r.commands == [f"chmod 644 {DEST}"]


def test_put_creates_a_missing_parent_directory() -> None:
    r = run(gpu_files.put, {"FileStates": [f"{DEST}|absent|nodir"]}, content=BODY, dest=DEST, mode="644")
    assert r.commands[0] == "mkdir -p /etc/modprobe.d" and "FileUploadCommand" in r.commands[1]


def test_put_refuses_a_directory_in_the_way() -> None:
    r = run(gpu_files.put, {"FileStates": directory(DEST)}, content=BODY, dest=DEST, mode="644")
    assert r.commands == [f"refuse: {DEST} exists and is not a regular file"]


def test_directory_creates_then_sets_mode_and_owner() -> None:
    r = run(gpu_files.directory, {"FileStates": ["/m|absent|dir"]}, path="/m", mode="755", user="llm")
    assert r.commands == ["mkdir -p /m", "chmod 755 /m", "chown llm /m"]
    r = run(gpu_files.directory, {"FileStates": directory("/m", "700")}, path="/m", mode="755", user="llm")
    assert r.commands == ["chmod 755 /m", "chown llm /m"]
    r = run(gpu_files.directory, {"FileStates": directory("/m", "700", "llm")}, path="/m", user="llm")
    assert r.commands == [] and r.noops == ["directory /m already exists"]


def _ops_on_one_host(facts: dict, *calls) -> tuple[FakeHost, list[list[str]]]:  # noqa: ANN002 ((op, kwargs) pairs)
    fake = FakeHost(facts)
    with ctx_state.use(FakeState()), ctx_host.use(fake):
        return fake, [[_text(c) for c in op._inner(**kw)] for op, kw in calls]


def test_the_snapshot_is_read_once_and_again_only_after_an_op_changed_something() -> None:
    first = [*file("/a"), *file("/b", sha="0" * 64), *file("/c")]
    fake, cmds = _ops_on_one_host(
        {"FileStates": Reads([first, first])},
        (gpu_files.put, {"content": BODY, "dest": "/a", "mode": "644"}),
        (gpu_files.put, {"content": BODY, "dest": "/b", "mode": "644"}),
        (gpu_files.put, {"content": BODY, "dest": "/c", "mode": "644"}),
    )
    assert cmds[0] == [] and len(cmds[1]) == 2 and cmds[2] == []
    assert fake.reads["HostSnapshot"] == 2  # /a and /b from one read; /b changed, so /c reads again


def test_predicting_changes_never_drops_the_snapshot() -> None:
    """While pyinfra only plans (not executing) nothing has run yet: the one read stays good for every op."""
    fake = FakeHost({"FileStates": [*file("/a", sha="0" * 64), *file("/b", sha="0" * 64)]})
    with ctx_state.use(FakeState(is_executing=False)), ctx_host.use(fake):
        for dest in ("/a", "/b"):
            assert len([_text(c) for c in gpu_files.put._inner(content=BODY, dest=dest, mode="644")]) == 2
    assert fake.reads["HostSnapshot"] == 1


def test_packages_read_dpkg_once_until_one_installs() -> None:
    installed = {"python3-venv": {"3.12"}, "docker.io": {"27"}}
    fake, cmds = _ops_on_one_host(
        {"DebPackages": Reads([installed, installed])},
        (packages.packages, {"packages": ["python3-venv"]}),
        (packages.packages, {"packages": ["docker.io"]}),
        (packages.packages, {"packages": ["cuda-toolkit-12-8"]}),
        (packages.packages, {"packages": ["docker.io"]}),
    )
    assert cmds[0] == cmds[1] == cmds[3] == [] and "cuda-toolkit-12-8" in cmds[2][0]
    assert fake.reads["HostSnapshot"] == 2


def test_snapshot_is_per_host_not_per_pyinfra_proxy() -> None:
    a, b = FakeHost({"DebPackages": {"x": {"1"}}}), FakeHost({"DebPackages": {"y": {"2"}}})
    with ctx_state.use(FakeState()):
        for fake, want in ((a, {"x": ["1"]}), (b, {"y": ["2"]})):
            with ctx_host.use(fake):
                from pyinfra import host

                assert snapshot.current(host).packages == want
