"""Drive gpu-llm operations against fixture facts, the way pyinfra's own operation tests do.

A fake host answers `get_fact` from a dict keyed by the fact class name ("NvidiaDriver", "LinuxDistribution");
a missing fact raises, so a fixture must list every fact an operation reads. A fact of ours may be given as its
raw command output (list of lines) and goes through its real process(); a `Reads([...])` gives successive reads
(before and after a command the operation ran). Commands come back as strings, FunctionCommands as
"refuse: <message>" or "call <name>".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinfra.api import FunctionCommand, StringCommand
from pyinfra.context import ctx_host, ctx_state

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia-smi"


@dataclass
class Reads:
    """Values a fact returns on its 1st, 2nd, ... read (the last one repeats)."""

    values: list[Any]


@dataclass
class Result:
    commands: list[str]
    noops: list[str]
    logs: list[str]


@dataclass
class FakeState:
    is_executing: bool = True


@dataclass
class FakeHost:
    facts: dict[str, Any]
    noops: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    reads: dict[str, int] = field(default_factory=dict)
    name: str = "fixture-host"
    print_prefix: str = ""

    def get_fact(self, cls: type, *args: Any, **kwargs: Any) -> Any:
        if cls.__name__ not in self.facts:
            raise KeyError(f"fixture lacks fact {cls.__name__} {kwargs or ''}")
        value = self.facts[cls.__name__]
        if isinstance(value, Reads):
            n = self.reads.get(cls.__name__, 0)
            self.reads[cls.__name__] = n + 1
            value = value.values[min(n, len(value.values) - 1)]
        if isinstance(value, list) and cls.__module__.startswith("gpu_llm."):
            return cls().process(value)
        return value

    def noop(self, description: str) -> None:
        self.noops.append(description)

    def log_styled(self, message: str, log_func: Any = None, **kwargs: Any) -> None:
        self.logs.append(message)


def _text(command: Any) -> str:
    if isinstance(command, StringCommand):
        return command.get_raw_value()
    if isinstance(command, FunctionCommand):
        if command.function.__name__ == "_refuse":
            return "refuse: " + command.args[0]
        return "call " + command.function.__name__
    return str(command)


def run(op: Any, facts: dict[str, Any], executing: bool = True, **args: Any) -> Result:
    """Run operation `op` (its generator, as pyinfra does at execution time) against `facts`."""
    fake = FakeHost(facts)
    with ctx_state.use(FakeState(is_executing=executing)), ctx_host.use(fake):
        commands = [_text(c) for c in op._inner(**args)]
    return Result(commands, fake.noops, fake.logs)


def fixture_lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()
