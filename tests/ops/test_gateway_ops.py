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


TLS_UNIT, TLS_UNIT_FILE = "gpu-llm-gateway-tls.service", "/etc/systemd/system/gpu-llm-gateway-tls.service"
TLS_CFG, TLS_CONFIG = "/etc/gpu-llm/gateway-tls.cfg", b"frontend x\n"


def tls_facts(unit: bytes | None, config: bytes | None, active: str = "active", enabled: str = "enabled") -> dict:
    def state(content: bytes | None) -> FileState:
        return FileState("file", 644, "root", "root", hashlib.sha256(content).hexdigest()) if content else \
            FileState("absent", parent_dir=True)
    return {"Systemd": True, "FileStates": {TLS_UNIT_FILE: state(unit), TLS_CFG: state(config)},
            "Services": {TLS_UNIT: Service(active, enabled)}}


def tls(facts_: dict, config: bytes | None = TLS_CONFIG, restart_when: Any = lambda: False) -> opkit.Result:
    return run(ops.tls_front, facts_, unit=TLS_UNIT, unit_file=TLS_UNIT_FILE, unit_content=CONTENT,
               config_path=TLS_CFG, config=config, restart_when=restart_when)


def test_https_front_is_written_enabled_started_then_a_noop() -> None:
    r = tls(tls_facts(None, None, "inactive", ""))
    assert r.commands[1:2] == [f"chmod 644 {TLS_CFG}"] and r.commands[3:] == [
        f"chmod 644 {TLS_UNIT_FILE}", "systemctl daemon-reload", f"systemctl enable {TLS_UNIT}", f"systemctl start {TLS_UNIT}"]
    r = tls(tls_facts(CONTENT, TLS_CONFIG))
    assert r.commands == [] and "active with its current configuration and certificate" in r.noops[0]


def test_https_front_restarts_on_a_new_config_or_certificate_only() -> None:
    r = tls(tls_facts(CONTENT, b"old\n"))
    assert r.commands[-1] == f"systemctl restart {TLS_UNIT}" and "systemctl daemon-reload" not in r.commands
    r = tls(tls_facts(CONTENT, TLS_CONFIG), restart_when=lambda: True)
    assert r.commands == [f"systemctl restart {TLS_UNIT}"]


def test_plain_http_removes_the_https_front_once() -> None:
    r = tls(tls_facts(CONTENT, TLS_CONFIG), config=None)
    assert r.commands == [f"systemctl disable --now {TLS_UNIT}", f"rm -f {TLS_UNIT_FILE} {TLS_CFG}",
                          "systemctl daemon-reload"]
    r = tls(tls_facts(None, None, "inactive", ""), config=None)
    assert r.commands == [] and "absent (plain HTTP)" in r.noops[0]
