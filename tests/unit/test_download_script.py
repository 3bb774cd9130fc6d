"""gpu_llm/remote/download.py as the host runs it: a subprocess against the fake Hub (tests/testbed/standins)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpu_llm.remote import download as dl

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "gpu_llm" / "remote" / "download.py"
FAKE_HF = ROOT / "tests" / "testbed" / "standins" / "fake_hf.py"
REPO = "Qwen/Qwen3-32B-AWQ"
SHARD = "model-00002-of-00004.safetensors"
TOKEN = "hf_test_secret_token_123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    def __init__(self, tmp: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "hub.log"
        self.proc = subprocess.Popen(
            [sys.executable, str(FAKE_HF), "--bind", "127.0.0.1", "--port", str(self.port), "--log", str(self.log),
             *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        banner = self.proc.stdout.readline()
        assert "serving" in banner, banner
        self.commit = banner.split("@")[1].split()[0]

    def requests(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def hub(tmp_path) -> Iterator[Hub]:
    h = Hub(tmp_path)
    yield h
    h.stop()


def run(tmp_path: Path, hub: Hub, *args: str, model_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_ENDPOINT": hub.url,
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    env.pop("HF_TOKEN", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=180)


def fetch(tmp_path, hub, model_dir, *extra, revision="main", transfer="resumable"):
    return run(tmp_path, hub, "fetch", "--repo", REPO, "--revision", revision, "--dir", str(model_dir),
               "--endpoint", hub.url, "--max-workers", "2", "--transfer", transfer, *extra)


both_transfers = pytest.mark.parametrize("transfer", dl.TRANSFERS)


def wait(tmp_path, hub, model_dir, log_file, revision="main"):
    return run(tmp_path, hub, "wait", "--repo", REPO, "--revision", revision, "--dir", str(model_dir),
               "--unit", "gpu-llm-test-no-such.service", "--log-file", str(log_file), "--timeout", "5")


@both_transfers
def test_fetch_resolves_branch_verifies_and_writes_manifest(tmp_path, hub, transfer):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "my-notes.txt").write_text("the user's own file")
    result = fetch(tmp_path, hub, model_dir, transfer=transfer)
    assert result.returncode == 0, result.stderr
    assert f"revision main is commit {hub.commit}" in result.stdout
    manifest = dl.read_manifest(model_dir)
    assert manifest["commit"] == hub.commit and manifest["revision"] == "main"
    assert SHARD in manifest["files"] and manifest["files"][SHARD]["sha256"]
    assert dl.content_problems(model_dir, manifest["files"]) == {}
    assert (model_dir / "my-notes.txt").read_text() == "the user's own file"
    assert "leaving 1 other file(s)" in result.stdout

    again = fetch(tmp_path, hub, model_dir, revision=hub.commit, transfer=transfer)
    assert again.returncode == 0 and "already complete" in again.stdout
    gets = [r for r in hub.requests() if r["method"] == "GET" and "/resolve/" in r["path"]]
    assert len(gets) == len(manifest["files"])  # the second run downloaded nothing


def test_xet_transfer_interrupted_fails_then_a_rerun_fetches_only_what_is_missing(tmp_path):
    # huggingface_hub 2.4 retries a cut GET within the call; after 6 cuts in a row the call fails. It deletes its
    # per-process partial file then (huggingface_hub#4228), so a re-run resumes per file: finished files stay.
    hub = Hub(tmp_path, "--cut-file", SHARD, "--cut-after", "1000000", "--cut-times", "6")
    try:
        model_dir = tmp_path / "model"
        first = fetch(tmp_path, hub, model_dir, transfer="xet")
        assert first.returncode != 0
        # one error line at the end of the log, right after huggingface_hub's warnings naming the file
        assert "Traceback" not in first.stderr, first.stderr[-2000:]
        last = first.stderr.strip().splitlines()[-3:]
        assert f"fetching {REPO}@{hub.commit} failed: RemoteProtocolError" in last[-1], last
        assert any(SHARD in line for line in last[:-1]), last
        assert dl.read_manifest(model_dir) is None, "no manifest before every file verified"
        assert not (model_dir / SHARD).exists()
        done_before = len(hub.requests())

        second = fetch(tmp_path, hub, model_dir, transfer="xet")
        assert second.returncode == 0, second.stderr
        refetched = {r["path"].rsplit("/", 1)[-1] for r in hub.requests()[done_before:]
                     if r["method"] == "GET" and "/resolve/" in r["path"]}
        assert refetched == {SHARD}
        assert dl.content_problems(model_dir, dl.read_manifest(model_dir)["files"]) == {}
    finally:
        hub.stop()


@both_transfers
def test_incomplete_leftovers_are_removed_once_every_file_verifies(tmp_path, hub, transfer):
    model_dir = tmp_path / "model"
    partial = model_dir / ".cache" / "huggingface" / "download" / "x9Yz.0123abcd.incomplete"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"left by an older huggingface_hub or a killed run")
    result = fetch(tmp_path, hub, model_dir, transfer=transfer)
    assert result.returncode == 0, result.stderr
    assert not partial.exists() and "removing stale partial download" in result.stdout


@both_transfers
def test_truncated_file_is_refetched_and_wait_reports_it_first(tmp_path, hub, transfer):
    model_dir = tmp_path / "model"
    assert fetch(tmp_path, hub, model_dir, transfer=transfer).returncode == 0
    shard = model_dir / SHARD
    size = shard.stat().st_size
    with shard.open("r+b") as f:
        f.truncate(size // 2)
    log_file = tmp_path / "download.log"
    log_file.write_text("line 1\nConnectionError: link died\n")

    waited = wait(tmp_path, hub, model_dir, log_file)
    assert waited.returncode == 1
    assert f"{SHARD} has {size // 2} bytes, expected {size}" in waited.stderr
    assert "ConnectionError: link died" in waited.stderr  # the log's tail

    refetch = fetch(tmp_path, hub, model_dir, transfer=transfer)
    assert refetch.returncode == 0, refetch.stderr
    assert shard.stat().st_size == size
    assert wait(tmp_path, hub, model_dir, log_file).returncode == 0


@both_transfers
def test_same_size_corruption_is_caught_by_sha256_and_refetched(tmp_path, hub, transfer):
    model_dir = tmp_path / "model"
    assert fetch(tmp_path, hub, model_dir, transfer=transfer).returncode == 0
    shard = model_dir / SHARD
    good = shard.read_bytes()
    stat = shard.stat()
    shard.write_bytes(b"\0" * len(good))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # huggingface_hub's own metadata still trusts it
    (model_dir / dl.MANIFEST_NAME).unlink()

    result = fetch(tmp_path, hub, model_dir, transfer=transfer)
    assert result.returncode == 0, result.stderr
    assert f"{SHARD} has sha256" in result.stdout
    assert shard.read_bytes() == good


@both_transfers
def test_token_comes_from_a_file_and_is_required(tmp_path, transfer):
    hub = Hub(tmp_path, "--require-token", TOKEN)
    try:
        model_dir = tmp_path / "model"
        denied = fetch(tmp_path, hub, model_dir, transfer=transfer)
        assert denied.returncode != 0 and dl.read_manifest(model_dir) is None
        token_file = tmp_path / "hf-token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        allowed = fetch(tmp_path, hub, model_dir, "--token-file", str(token_file), transfer=transfer)
        assert allowed.returncode == 0, allowed.stderr
        assert TOKEN not in allowed.stdout + allowed.stderr
        gets = [r for r in hub.requests() if r["method"] == "GET" and "/resolve/" in r["path"]]
        assert gets and all(r["auth"] for r in gets[-len(dl.read_manifest(model_dir)["files"]):])
    finally:
        hub.stop()


def test_wait_without_manifest_fails_naming_it(tmp_path, hub):
    result = wait(tmp_path, hub, tmp_path / "empty", tmp_path / "absent.log")
    assert result.returncode == 1 and "no manifest" in result.stderr


def test_resumable_transfer_continues_a_cut_file_in_the_next_run(tmp_path):
    # the link dies at byte 2,500,000 of the 3 MiB shard; the whole 1 MiB reads before it are kept, the GETs
    # resumed from there die at once (no progress): after MAX_STALLS of those the run fails and keeps the part;
    # the next run asks for the rest only
    cut = 2_500_000
    kept = cut // dl.RESUME_CHUNK * dl.RESUME_CHUNK
    hub = Hub(tmp_path, "--cut-file", SHARD, "--cut-after", str(cut), "--cut-times", str(1 + dl.MAX_STALLS), "--shard-mib", "3")
    try:
        model_dir = tmp_path / "model"
        first = fetch(tmp_path, hub, model_dir)
        assert first.returncode != 0
        assert "Traceback" not in first.stderr, first.stderr[-2000:]
        assert f"{SHARD}: {dl.MAX_STALLS} attempts in a row got no data" in first.stderr
        assert f"{kept} of" in first.stderr and "a re-run resumes there" in first.stderr
        assert dl.read_manifest(model_dir) is None and not (model_dir / SHARD).exists()
        (part,) = dl.stale_parts(model_dir)
        assert part.stat().st_size == kept > 0
        others = [r for r in hub.requests() if "/resolve/" in r["path"] and SHARD not in r["path"]]
        assert others and all(r["status"] in (200, 206) for r in others)  # the other files completed meanwhile
        done_before = len(hub.requests())

        second = fetch(tmp_path, hub, model_dir)
        assert second.returncode == 0, second.stderr
        gets = [r for r in hub.requests()[done_before:] if r["method"] == "GET" and "/resolve/" in r["path"]]
        assert [(r["path"].rsplit("/", 1)[-1], r["range"], r["status"]) for r in gets] == [
            (SHARD, f"bytes={kept}-", 206)]
        assert f"{SHARD}: resuming at byte {kept}" in second.stdout
        assert dl.content_problems(model_dir, dl.read_manifest(model_dir)["files"]) == {}
        assert dl.stale_parts(model_dir) == []
    finally:
        hub.stop()


@pytest.mark.parametrize(("left", "says"), [
    # longer than the file (another file's leftovers under its name): dropped, fetched from 0
    (lambda size: b"x" * (size + 5), ["is larger than"]),
    # wrong bytes kept from an earlier run: resumed, fails sha256, the second attempt starts from 0
    (lambda size: b"\0" * 1000, [f"{SHARD}: resuming at byte 1000", f"{SHARD} has sha256"]),
], ids=["longer-than-the-file", "corrupt-bytes"])
def test_resumable_transfer_recovers_from_a_bad_part(tmp_path, hub, left, says):
    model_dir = tmp_path / "model"
    assert fetch(tmp_path, hub, model_dir).returncode == 0
    files = dl.read_manifest(model_dir)["files"]
    part = model_dir / dl.PARTIAL_DIR / f"{files[SHARD]['sha256']}.part"
    good = (model_dir / SHARD).read_bytes()
    part.write_bytes(left(len(good)))
    (model_dir / SHARD).unlink()
    (model_dir / dl.MANIFEST_NAME).unlink()
    result = fetch(tmp_path, hub, model_dir)
    assert result.returncode == 0, result.stderr
    assert all(line in result.stdout for line in says), result.stdout
    assert (model_dir / SHARD).read_bytes() == good
