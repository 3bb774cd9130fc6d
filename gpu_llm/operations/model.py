"""Operations for the model snapshot: hf venv, secret files, a background download unit and its join."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from io import StringIO

from pyinfra import host
from pyinfra.api import FileUploadCommand, FunctionCommand, HiddenValue, QuoteString, StringCommand

from gpu_llm.facts import snapshot
from gpu_llm.facts.model import VENV_MARKER, SnapshotState
from gpu_llm.operations import files as gpu_files
from gpu_llm.operations import operation


@dataclass(frozen=True)
class Download:
    """Everything needed to start, find and join the host's model download (all paths on the host)."""

    repo: str
    revision: str
    model_dir: str
    python: str  # the hf venv's python
    script: str  # gpu_llm/remote/download.py as copied to the host
    unit: str  # transient systemd unit name, e.g. gpu-llm-model-download.service
    log_file: str
    endpoint: str
    token_file: str | None
    max_workers: int
    timeout_s: int
    user: str
    transfer: str = "resumable"  # hf_transfer: "resumable" or "xet"

    def fetch_argv(self) -> list[str]:
        argv = [self.python, self.script, "fetch", "--repo", self.repo, "--revision", self.revision,
                "--dir", self.model_dir, "--endpoint", self.endpoint, "--max-workers", str(self.max_workers),
                "--transfer", self.transfer]
        return argv + (["--token-file", self.token_file] if self.token_file else [])

    def wait_argv(self) -> list[str]:
        return [self.python, self.script, "wait", "--repo", self.repo, "--revision", self.revision,
                "--dir", self.model_dir, "--unit", self.unit, "--log-file", self.log_file,
                "--timeout", str(self.timeout_s + 60)]


def start_command(d: Download) -> StringCommand:
    """systemd-run a transient unit that fetches the snapshot; returns at once, the unit keeps going.

    The token only travels as a file path; the log goes to d.log_file (truncated per attempt) and the journal
    keeps the unit's start/stop. RuntimeMaxSec ends an attempt after hf_download_timeout (a re-run resumes).
    """
    props = [f"RuntimeMaxSec={d.timeout_s}", f"StandardOutput=truncate:{d.log_file}", "StandardError=inherit"]
    if d.user != "root":
        props.append(f"User={d.user}")
    env = ["HF_XET_HIGH_PERFORMANCE=1", "HF_HUB_DISABLE_PROGRESS_BARS=1", "HF_HUB_DISABLE_TELEMETRY=1",
           "PYTHONUNBUFFERED=1"]
    bits: list = ["systemctl", "reset-failed", QuoteString(d.unit), "2>/dev/null", ";",
                  "systemd-run", "--quiet", "--collect", QuoteString(f"--unit={d.unit}"),
                  QuoteString(f"--description=gpu-llm: download {d.repo}@{d.revision}")]
    bits += [QuoteString(f"--property={p}") for p in props]
    bits += [QuoteString(f"--setenv={e}") for e in env]
    bits += ["--", *(QuoteString(a) for a in d.fetch_argv())]
    return StringCommand(*bits)


def _report(state, host, d: Download) -> bool:  # noqa: ANN001 (pyinfra passes its State and Host)
    snap: SnapshotState = snapshot.fresh(host).model
    host.log(f"model {d.repo} at {snap.commit} (revision {d.revision}) complete in {d.model_dir}")
    return True


@operation()
def download_started(d: Download):
    """Start the background download unless the snapshot is complete or the unit already runs."""
    snap: SnapshotState = snapshot.current(host).model
    if not snap.problems(d.repo, d.revision):  # complete stays complete: download_joined reuses this read
        host.noop(f"model {d.repo} at {snap.commit} complete in {d.model_dir}")
        return
    if snap.running:
        host.noop(f"download of {d.repo}@{d.revision} already running ({d.unit}, log {d.log_file})")
    else:
        yield start_command(d)


@operation()
def download_joined(d: Download):
    """Wait for the download unit (re-starting it if a reboot or failure stopped it) and require the manifest.

    Fails with the tail of the download log when the snapshot is still incomplete.
    """
    snap: SnapshotState = snapshot.current(host).model
    if not snap.problems(d.repo, d.revision):
        host.noop(f"model {d.repo} at {snap.commit} complete in {d.model_dir}")
        return
    if not snap.running:
        yield start_command(d)
    yield StringCommand(*(QuoteString(a) for a in d.wait_argv()))
    yield FunctionCommand(_report, (d,), {})


@operation()
def hf_venv(path: str, requirements: list[str], pip_args: list[str]):
    """A venv at `path` with `requirements` installed by pip.

    Own op because pyinfra's pip.packages handles one version specifier per package only; a marker file
    listing what was installed (written after pip succeeded) makes re-runs a noop.
    """
    wanted = "\n".join([*requirements, *(f"pip-arg {a}" for a in pip_args)])
    if snapshot.current(host).venv_marker == wanted:
        host.noop(f"venv {path} has {', '.join(requirements)}")
        return
    pip = f"{path}/bin/pip"
    yield StringCommand("python3", "-m", "venv", QuoteString(path))
    yield StringCommand(QuoteString(pip), "install", "--quiet", "--disable-pip-version-check",
                        *(QuoteString(a) for a in pip_args), *(QuoteString(r) for r in requirements))
    yield StringCommand("printf", QuoteString("%s\\n"), QuoteString(wanted), ">", QuoteString(f"{path}/{VENV_MARKER}"))


def secret_file_commands(path: str, raw: str, user: str):
    """Commands making `path` a 0600 file of `user` holding `raw`; none when it already is.

    Not files.put: that prints file contents under --diff. The file is created empty with 0600 first, so
    the upload (which truncates and keeps the mode) never leaves the secret readable by others.
    """
    current = gpu_files.state(path)
    digest = hashlib.sha256(raw.encode()).hexdigest()
    same = current is not None and current.kind == "file" and current.sha256 == digest
    if same and current.mode == 600 and current.user == user:
        host.noop(f"{path} holds the secret (0600, {user})")
        return
    yield StringCommand("(", "umask", "077", "&&", "touch", QuoteString(path), ")", "&&",
                        "chmod", "600", QuoteString(path), "&&", "chown", QuoteString(user), QuoteString(path))
    if not same:
        yield FileUploadCommand(StringIO(raw), path)


@operation()
def secret_file(path: str, content: HiddenValue | None, user: str = "root"):
    """A file only `user` can read (0600) holding `content` (a pyinfra HiddenValue); None removes it."""
    if content is not None:
        yield from secret_file_commands(path, content.unmask(), user)
    elif (current := gpu_files.state(path)) is not None and current.kind == "file":
        yield StringCommand("rm", "-f", QuoteString(path))
    else:
        host.noop(f"{path} absent")
