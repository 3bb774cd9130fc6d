"""pyinfra facts about GPU hosts; each gathers what one concern needs in a single command."""

from __future__ import annotations

# Section marker our fact commands print before each part of their output.
MARK = "##gpu-llm:"


def sections(lines: list[str]) -> dict[str, list[str]]:
    """Split fact output at `##gpu-llm:<name>` marker lines into {name: lines}."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if line.startswith(MARK):
            current = out.setdefault(line[len(MARK):].strip(), [])
        elif current is not None:
            current.append(line)
    return out


def marker(name: str) -> str:
    """Shell snippet printing the marker of section `name`."""
    return f"echo '{MARK}{name}'"


class JsonFact:
    """Mixin for fact result dataclasses: `pyinfra HOST fact ...` serialises results through `to_json`."""

    def to_json(self) -> dict:
        import dataclasses

        return dataclasses.asdict(self)  # type: ignore[call-overload]
