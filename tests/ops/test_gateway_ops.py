"""gpu_llm.operations.gateway: venv, unit and service decisions from the host snapshot (facts faked)."""

from __future__ import annotations

import hashlib
from typing import Any

from pyinfra.context import ctx_host, ctx_state

from gpu_llm.facts.files import FileState
from gpu_llm.facts.snapshot import Service
from gpu_llm.operations import gateway as ops
from tests.ops import opkit

UNIT, UNIT_FILE = "gpu-llm-gateway.service", "/etc/systemd/system/gpu-llm-gateway.service"
CONTENT = b"[Unit]\nDescription=x\n"


class FakeHost(opkit.FakeHost):
    def log(self, message: str) -> None:
        self.logs.append(message)


def run(op: Any, facts: dict[str, Any], **kwargs: Any) -> opkit.Result:
    fake = FakeHost(facts)
    with ctx_state.use(opkit.FakeState(is_executing=True)), ctx_host.use(fake):
        commands = [opkit._text(c) for c in op._inner(**kwargs)]
    return opkit.Result(commands, fake.noops, fake.logs)


def facts(unit_sha: str | None, active: str = "active", enabled: str = "enabled", marker: str | None = None) -> dict:
    files = {UNIT_FILE: FileState("file", 644, "root", "root", unit_sha) if unit_sha else FileState("absent"),
             "/opt/gw/.gpu-llm-installed": FileState("file", 644, "root", "root", marker) if marker else FileState("absent")}
    return {"Systemd": True, "FileStates": files, "Services": {UNIT: Service(active, enabled)}}


def test_unchanged_unit_running_is_a_noop() -> None:
    r = run(ops.router, facts(hashlib.sha256(CONTENT).hexdigest()), unit=UNIT, unit_file=UNIT_FILE, content=CONTENT)
    assert r.commands == [] and r.noops


def test_new_unit_is_written_reloaded_enabled_started() -> None:
    r = run(ops.router, facts(None, "inactive", "not-found"), unit=UNIT, unit_file=UNIT_FILE, content=CONTENT)
    assert r.commands[1:] == [f"chmod 644 {UNIT_FILE}", "systemctl daemon-reload", f"systemctl enable {UNIT}",
                              f"systemctl start {UNIT}"]


def test_changed_backends_restart_it() -> None:
    r = run(ops.router, facts("0" * 64), unit=UNIT, unit_file=UNIT_FILE, content=CONTENT)
    assert r.commands[-1] == f"systemctl restart {UNIT}" and "systemctl daemon-reload" in r.commands


def test_venv_marker_makes_reinstall_a_noop() -> None:
    wanted = ops.marker_content("vllm-router==0.1.17", ["--no-index"])
    r = run(ops.venv, facts(None, marker=hashlib.sha256(wanted.encode()).hexdigest()), path="/opt/gw",
            requirement="vllm-router==0.1.17", pip_args=["--no-index"])
    assert r.commands == []
    r = run(ops.venv, facts(None), path="/opt/gw", requirement="vllm-router==0.1.17", pip_args=["--no-index"])
    assert r.commands[0] == "python3 -m venv /opt/gw"
    assert r.commands[1] == "/opt/gw/bin/pip install --quiet --disable-pip-version-check --no-index vllm-router==0.1.17"
