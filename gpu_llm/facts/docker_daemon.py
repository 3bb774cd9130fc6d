"""Docker's /etc/docker/daemon.json as data."""

from __future__ import annotations

from gpu_llm.facts import JsonFact

import json
from dataclasses import dataclass, field
from typing import Any

from pyinfra.api import FactBase

DAEMON_JSON = "/etc/docker/daemon.json"


@dataclass
class DaemonJson(JsonFact):
    """`data` is the parsed file ({} when absent or empty); `error` says why it could not be parsed."""

    exists: bool = False
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def parse_daemon_json(lines: list[str]) -> DaemonJson:
    if not lines or lines[0] != "present":
        return DaemonJson()
    text = "\n".join(lines[1:]).strip()
    if not text:
        return DaemonJson(exists=True)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return DaemonJson(exists=True, error=f"{DAEMON_JSON} is not valid JSON ({e})")
    if not isinstance(data, dict):
        return DaemonJson(exists=True, error=f"{DAEMON_JSON} holds a {type(data).__name__}, not a JSON object")
    return DaemonJson(exists=True, data=data)


class DockerDaemonJson(FactBase[DaemonJson]):
    """
    Parsed /etc/docker/daemon.json.

    .. code:: python

        DaemonJson(exists=True, data={"runtimes": {"nvidia": {...}}, "log-driver": "json-file"}, error="")
    """

    @staticmethod
    def default() -> DaemonJson:
        return DaemonJson()

    def command(self) -> str:
        return f"if [ -f {DAEMON_JSON} ]; then echo present; cat {DAEMON_JSON}; fi; true"

    def process(self, output: list[str]) -> DaemonJson:
        return parse_daemon_json(output)
