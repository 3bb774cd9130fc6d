"""Mode, owner and sha256 of several small files and directories in one command (pyinfra's files.put reads 3
facts per file, files.directory 1 per directory)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from pyinfra.api import FactBase

from gpu_llm.facts import JsonFact


@dataclass(frozen=True)
class FileState(JsonFact):
    """kind: "file" | "dir" | "absent" | "other" (device, socket, ...); parent_dir: the parent directory exists."""

    kind: str
    mode: int = 0  # octal digits as an int, 644 (pyinfra's File fact convention)
    user: str = ""
    group: str = ""
    sha256: str = ""
    parent_dir: bool = True


def parse_file_states(lines: list[str]) -> dict[str, FileState]:
    """`path|absent|dir` / `path|absent|nodir` lines, then `stat -L -c '%n|%F|%a|%U|%G'` lines, then sha256sum's
    `<sha256>  <path>` lines (see FileStates.command)."""
    out: dict[str, FileState] = {}
    sums = {}
    for line in lines:
        if "|" not in line:
            digest, _, path = line.partition("  ")
            sums[path] = digest
            continue
        path, kind, *rest = line.split("|")
        if kind == "absent":
            out[path] = FileState("absent", parent_dir=rest == ["dir"])
        elif len(rest) == 3 and rest[0].isdigit():
            name = "file" if kind.startswith("regular") else "dir" if kind == "directory" else "other"
            out[path] = FileState(name, int(rest[0]), rest[1], rest[2])
    return {p: FileState(f.kind, f.mode, f.user, f.group, sums.get(p, ""), f.parent_dir) if f.kind == "file" else f
            for p, f in out.items()}


class FileStates(FactBase[dict]):
    """
    {path: FileState} for each of `paths` (a tuple).

    .. code:: python

        {"/etc/udev/rules.d/71-nvidia-dev-char.rules": FileState("file", 644, "root", "root", "9f2c...")}
    """

    @staticmethod
    def default() -> dict:
        return {}

    def command(self, paths: tuple[str, ...]) -> str:
        quoted = " ".join(shlex.quote(p) for p in paths)
        # shell builtins for the absent ones, then one stat and one sha256sum for all (directories: no digest)
        return (f"for p in {quoted}; do [ -e \"$p\" ] || {{ [ -d \"${{p%/*}}/\" ] && echo \"$p|absent|dir\" "
                f"|| echo \"$p|absent|nodir\"; }}; done; stat -L -c '%n|%F|%a|%U|%G' -- {quoted} 2>/dev/null; "
                f"sha256sum -- {quoted} 2>/dev/null; true")

    def process(self, output: list[str]) -> dict:
        return parse_file_states(output)
