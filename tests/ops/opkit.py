"""Drive gpu-llm operations against fixture facts, the way pyinfra's own operation tests do.

Operations read one HostSnapshot (gpu_llm/facts/snapshot.py). A fake host builds it from a dict of its parts keyed
by the name of the fact that reads each part on its own ("NvidiaDriver", "LinuxDistribution", "FileStates",
"DebPackages", "DockerContainers", ...: see `PARTS`), or answers other facts (VllmVerdict) from the same dict. A part
of ours may be given as its raw command output (list of lines) and goes through its real parser; a `Reads([...])`
gives successive snapshot reads (before and after a command the operation ran). Commands come back as strings,
FunctionCommands as "refuse: <message>" or "call <name>".
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pyinfra.api import FunctionCommand, StringCommand
from pyinfra.context import ctx_host, ctx_state

from gpu_llm.facts import snapshot
from gpu_llm.facts.snapshot import HostSnapshot, HostState, Probe

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

    def __post_init__(self) -> None:
        snapshot.use(self, PROBE)

    def get_fact(self, cls: type, *args: Any, **kwargs: Any) -> Any:
        if cls is HostSnapshot:
            n = self.reads.get("HostSnapshot", 0)
            self.reads["HostSnapshot"] = n + 1
            return compose(self.facts, n)
        if cls.__name__ not in self.facts:
            raise KeyError(f"fixture lacks fact {cls.__name__} {kwargs or ''}")
        return _value(self.facts[cls.__name__], self.reads.setdefault(cls.__name__, 0), cls)

    def noop(self, description: str) -> None:
        self.noops.append(description)

    def log_styled(self, message: str, log_func: Any = None, **kwargs: Any) -> None:
        self.logs.append(message)


PROBE = Probe(model_dir="/home/llm/model/qwen/Qwen3-32B-AWQ", download_unit="gpu-llm-model-download.service",
              hf_venv="/opt/gpu-llm/hf-venv")


def _value(value: Any, n: int, cls: type | None = None) -> Any:
    if isinstance(value, Reads):
        value = value.values[min(n, len(value.values) - 1)]
    if isinstance(value, list) and cls is not None and cls.__module__.startswith("gpu_llm."):
        return cls().process(value)
    return value


def _parts() -> dict[str, tuple[str, type | None]]:
    from gpu_llm.facts.docker_daemon import DockerDaemonJson
    from gpu_llm.facts.files import FileStates
    from gpu_llm.facts.gpu import NvidiaGpus
    from gpu_llm.facts.host import Preflight
    from gpu_llm.facts.model import ModelSnapshot
    from gpu_llm.facts.nvidia import NvidiaDriver

    return {"Preflight": ("preflight", Preflight), "NvidiaDriver": ("driver", NvidiaDriver),
            "NvidiaGpus": ("gpus", NvidiaGpus), "FileStates": ("files", FileStates),
            "DockerDaemonJson": ("daemon", DockerDaemonJson), "ModelSnapshot": ("model", ModelSnapshot),
            "DebPackages": ("packages", None), "AptSources": ("sources", None), "Services": ("services", None),
            "Systemd": ("systemd", None), "VenvMarker": ("venv_marker", None), "DockerContainers": ("containers", None),
            "Images": ("images", None), "Verified": ("verified", None),
            "AptLists": ("apt_lists", None)}


def compose(facts: dict[Any, Any], n: int = 0) -> HostState:
    """The HostState a snapshot read number `n` returns, from `facts` keyed by part fact names (or fact classes)."""
    parts = _parts()
    values: dict[str, Any] = {}
    for key, raw in facts.items():
        name = key if isinstance(key, str) else getattr(key, "__name__", "")
        if name == "LinuxDistribution":
            continue
        if name in parts:
            attr, cls = parts[name]
            value = _value(raw, n, cls)
            if name == "DebPackages":
                value = {k: list(v) for k, v in value.items()}
            if name == "DockerContainers":
                value = value or []
            values[attr] = value
    state = HostState(**values)
    distro = next((v for k, v in facts.items()
                   if (k if isinstance(k, str) else getattr(k, "__name__", "")) == "LinuxDistribution"), None)
    if distro is not None:
        distro = _value(distro, n)
        meta = dict(distro.get("release_meta") or {})
        meta.setdefault("NAME", distro.get("name", ""))
        state.preflight = replace(state.preflight, release=meta)
    return state


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
