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
    """`path|file|mode|user|group|sha256`, `path|dir|mode|user|group|`, `path|absent|dir` / `path|absent|nodir`,
    `path|other` lines."""
    out = {}
    for line in lines:
        path, _, rest = line.partition("|")
        parts = rest.split("|")
        if parts[0] in ("file", "dir") and len(parts) == 5 and parts[1].isdigit():
            out[path] = FileState(parts[0], int(parts[1]), parts[2], parts[3], parts[4].strip())
        elif parts[0] == "absent":
            out[path] = FileState("absent", parent_dir=parts[1:] == ["dir"])
        elif parts[0] == "other":
            out[path] = FileState("other")
    return out


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
        return (f"for p in {quoted}; do "
                'if [ -f "$p" ]; then printf "%s|file|%s|" "$p" "$(stat -c "%a|%U|%G" "$p")"; '
                "sha256sum < \"$p\" | cut -d ' ' -f 1; "
                'elif [ -d "$p" ]; then printf "%s|dir|%s|\\n" "$p" "$(stat -c "%a|%U|%G" "$p")"; '
                'elif [ -e "$p" ]; then echo "$p|other"; '
                'elif [ -d "$(dirname "$p")" ]; then echo "$p|absent|dir"; else echo "$p|absent|nodir"; fi; done')

    def process(self, output: list[str]) -> dict:
        return parse_file_states(output)
