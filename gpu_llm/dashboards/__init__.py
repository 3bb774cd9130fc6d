"""The Grafana dashboards gpu-llm provisions: its fleet overview (built in gpu_llm/monitoring.py) and vLLM's own
dashboards vendored in this directory (each *.json here with a SOURCE entry naming its origin and licence)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from gpu_llm import monitoring as mon

HERE = Path(__file__).resolve().parent
FLEET = "gpu-llm-fleet.json"


def vendored() -> list[Path]:
    return sorted(HERE.glob("*.json"))


@cache  # built from files in this package: once per run, not once per host (the host probe asks for paths() often)
def dashboards() -> dict[str, bytes]:
    """{file name: JSON} as they land in monitoring.GRAFANA_DASHBOARDS_DIR."""
    out = {FLEET: mon.dashboard_json(mon.fleet_dashboard())}
    for path in vendored():
        out[path.name] = mon.dashboard_json(mon.provisioned_vllm_dashboard(json.loads(path.read_text())))
    return out


def names() -> list[str]:
    """The dashboards' file names, without building their JSON."""
    return sorted([FLEET, *(path.name for path in vendored())])


def paths() -> list[str]:
    return [f"{mon.GRAFANA_DASHBOARDS_DIR}/{name}" for name in names()]
