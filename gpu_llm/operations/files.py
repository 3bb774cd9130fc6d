"""Small files from the deploying machine and directories, their state read from the host snapshot (facts/snapshot.py:
mode, owner and sha256 of every managed path in the one command)."""

from __future__ import annotations

import hashlib
from io import BytesIO

from pyinfra import host
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand
from pyinfra.operations.util.files import chmod, chown

from gpu_llm.facts import snapshot
from gpu_llm.facts.files import FileState
from gpu_llm.operations import download_naming_url, operation, refuse


def state(path: str) -> FileState | None:
    """`path`'s FileState from the host snapshot; None when the snapshot was not told to read it (gpu_llm.layout)."""
    return snapshot.current(host).files.get(path)


def file_commands(path: str, content: bytes, mode: int, current: FileState | None) -> list[Any]:
    """Commands making `path` hold `content` with `mode` (created with the mode first: no readable window)."""
    same = current is not None and current.kind == "file" and current.sha256 == hashlib.sha256(content).hexdigest()
    if same and current.mode == mode:
        return []
    commands: list[Any] = []
    if current is None or not current.parent_dir:
        commands.append(StringCommand("mkdir", "-p", QuoteString(path.rsplit("/", 1)[0] or "/")))
    commands.append(StringCommand("(", "umask", "077", "&&", "touch", QuoteString(path), ")", "&&",
                                  "chmod", str(mode), QuoteString(path)))
    if not same:
        commands.append(FileUploadCommand(BytesIO(content), path))
    return commands


@operation()
def put(content: bytes, dest: str, mode: str):
    """
    `dest` holds `content` with `mode` (owner and group are left as they are, as files.put without user/group).

    + content: the file's bytes (read or rendered on the deploying machine)
    + dest: path on the host; its parent directory is created when missing
    + mode: octal mode, e.g. "644"

    **Example:**

    .. code:: python

        files.put(name="Install the udev rule", content=b"...", dest="/etc/udev/rules.d/71-x.rules", mode="644")
    """
    current = state(dest)
    if current is None or current.kind not in ("file", "absent"):
        yield refuse(f"{dest} exists and is not a regular file" if current else f"could not read the state of {dest}")
        return
    same = current.kind == "file" and current.sha256 == hashlib.sha256(content).hexdigest()
    if same and current.mode == int(mode):
        host.noop(f"{dest} is up to date")
        return
    if not current.parent_dir:
        yield StringCommand("mkdir", "-p", QuoteString(dest.rsplit("/", 1)[0] or "/"))
    if not same:
        yield FileUploadCommand(BytesIO(content), dest)
    yield chmod(dest, int(mode))


@operation()
def directory(path: str, mode: str | None = None, user: str | None = None):
    """
    `path` is a directory, with `mode` and owner `user` where given (as files.directory, not recursive).

    + path: directory on the host, created with its parents when missing
    + mode: octal mode, e.g. "755"; None leaves it
    + user: owner; None leaves it

    **Example:**

    .. code:: python

        files.directory(name="Create the log directory", path="/var/log/gpu-llm", mode="755")
    """
    current = state(path)
    if current is None or current.kind not in ("dir", "absent"):
        yield refuse(f"{path} exists and is not a directory" if current else f"could not read the state of {path}")
        return
    wrong_mode = mode is not None and (current.kind == "absent" or current.mode != int(mode))
    wrong_user = user is not None and (current.kind == "absent" or current.user != user)
    if not (current.kind == "absent" or wrong_mode or wrong_user):
        host.noop(f"directory {path} already exists")
        return
    if current.kind == "absent":
        yield StringCommand("mkdir", "-p", QuoteString(path))
    if wrong_mode:
        yield chmod(path, int(mode))
    if wrong_user:
        yield chown(path, user)


def downloaded(dest: str, mode: str) -> bool:
    """True, noting a noop, when `dest` is a file with `mode`: files.download never fetches an existing file again
    (it only fixes the mode), so the snapshot's read of `dest` answers for its File fact."""
    current = state(dest)
    if current is not None and current.kind == "file" and current.mode == int(mode):
        host.noop(f"file {dest} has already been downloaded")
        return True
    return False


@operation()
def download(src: str, dest: str, mode: str, setting: str):
    """
    files.download(src=src, dest=dest, mode=mode), its check read from the snapshot, a failed fetch naming `setting`.

    **Example:**

    .. code:: python

        files.download(name="Download the signing key", src=URL, dest="/etc/apt/keyrings/x.asc", mode="644",
                       setting="container_toolkit_repo_url")
    """
    if not downloaded(dest, mode):
        yield from download_naming_url(src, dest, setting, mode)
