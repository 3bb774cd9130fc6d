"""Facts about the model snapshot on a host: manifest, file sizes, download unit, hf venv (cheap: no hashing)."""

from __future__ import annotations

from gpu_llm.facts import JsonFact

import json
from dataclasses import dataclass, field
from typing import Any

from pyinfra.api import FactBase, QuoteString, StringCommand

from gpu_llm.remote.download import MANIFEST_NAME, manifest_problems

_SEP = "@@gpu-llm@@"
# Written into a venv after pip installed what it lists (see operations.model.hf_venv).
VENV_MARKER = ".gpu-llm-requirements"


@dataclass(frozen=True)
class SnapshotState(JsonFact):
    """What a host has in model_dir: the manifest (None if absent), file sizes, the download unit's state."""

    manifest: dict[str, Any] | None
    sizes: dict[str, int] = field(default_factory=dict)
    unit_state: str = ""  # `systemctl is-active`: active, activating, inactive, failed, "" (no unit/systemd)

    @property
    def running(self) -> bool:
        return self.unit_state in ("active", "activating", "reloading", "deactivating")

    def problems(self, repo: str, revision: str) -> list[str]:
        return manifest_problems(self.manifest, self.sizes, repo, revision)

    @property
    def commit(self) -> str | None:
        return (self.manifest or {}).get("commit")


class ModelSnapshot(FactBase[SnapshotState]):
    """The manifest in model_dir, the size of every file outside .cache/, and the download unit's state."""

    def command(self, model_dir: str, unit: str | None) -> StringCommand:
        """`unit=None`: without the unit's state (the host snapshot reads it with its other units)."""
        state = ["systemctl", "is-active", QuoteString(unit), "2>/dev/null", ";"] if unit else []
        return StringCommand(
            "cat", QuoteString(f"{model_dir}/{MANIFEST_NAME}"), "2>/dev/null", "||", "echo", "null", ";",
            "echo", ";", "echo", _SEP, ";", *state,
            "echo", _SEP, ";",
            "find", QuoteString(model_dir), "-path", QuoteString(f"{model_dir}/.cache"), "-prune", "-o",
            "-type", "f", "-printf", QuoteString("%s\\t%P\\n"), "2>/dev/null", ";", "true",
        )

    def process(self, output: list[str]) -> SnapshotState:
        return parse_snapshot_output(output)


def parse_snapshot_output(lines: list[str]) -> SnapshotState:
    """Split ModelSnapshot's output (manifest JSON, unit state, `size<TAB>path` lines) into a SnapshotState."""
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.strip() == _SEP:
            sections.append([])
        else:
            sections[-1].append(line)
    sections += [[]] * (3 - len(sections))
    try:
        manifest = json.loads("\n".join(sections[0]) or "null")
    except ValueError:
        manifest = None  # a damaged manifest means "not known complete": the download re-verifies
    sizes = {}
    for line in sections[2]:
        size, _, path = line.partition("\t")
        if size.isdigit() and path:
            sizes[path] = int(size)
    unit_state = (sections[1][0].strip() if sections[1] else "")
    return SnapshotState(manifest if isinstance(manifest, dict) else None, sizes, unit_state)


class VenvMarker(FactBase[str | None]):
    """Contents of the marker gpu-llm writes into a venv after a successful pip install, None if absent."""

    def command(self, venv: str) -> StringCommand:
        return StringCommand(
            "test", "-x", QuoteString(f"{venv}/bin/python"), "&&",
            "cat", QuoteString(f"{venv}/{VENV_MARKER}"), "2>/dev/null",
            "||", "true",
        )

    def process(self, output: list[str]) -> str | None:
        text = "\n".join(output).strip()
        return text or None
