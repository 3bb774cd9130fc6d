"""gpu_llm.operations.watchdog: install/update/noop/disable decisions from the host snapshot (facts faked)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gpu_llm.defaults import DEFAULTS
from gpu_llm.facts.files import FileState
from gpu_llm.facts.gpu import GpuInventory
from gpu_llm.facts.snapshot import Service
from gpu_llm.operations import watchdog as ops
from gpu_llm.plan import ServeConfig, plan_instances
from gpu_llm.plan.types import GPU
from gpu_llm.settings import Settings
from pyinfra.context import ctx_host, ctx_state

from tests.ops import opkit

GPUS = [GPU(index=i, name="NVIDIA H200", memory_mib=143771, compute_capability=(9, 0), driver_version="570.172.08")
        for i in range(2)]
UNIT, UNIT_FILE, SCRIPT_PATH, CONFIG_PATH = ("gpu-llm-watchdog.service", "/etc/systemd/system/gpu-llm-watchdog.service",
                                             "/opt/v/gpu-llm-watchdog.py", "/etc/gpu-llm/watchdog.json")
SCRIPT = b"print('watchdog')\n"
LIMITS = {"interval": 15, "stall_seconds": 120, "start_grace": 600, "probe_timeout": 30, "probe_failures": 3,
          "max_restarts_per_hour": 3}


def config(**overrides: Any) -> ServeConfig:
    return ServeConfig.from_settings(Settings.from_data({**DEFAULTS, "vllm_image": "vllm/vllm-openai:v0.10.1",
                                                         **overrides}))


def args(cfg: ServeConfig, enabled: bool = True, limits: dict | None = None) -> dict[str, Any]:
    return dict(config=cfg, enabled=enabled, unit=UNIT, unit_file=UNIT_FILE, python="/opt/v/bin/python",
                script_path=SCRIPT_PATH, script=SCRIPT, config_path=CONFIG_PATH, settings=limits or LIMITS,
                log_file="/var/log/gpu-llm/watchdog.log", state_file="/var/lib/gpu-llm/watchdog-state.json")


def installed_files(cfg: ServeConfig, limits: dict | None = None) -> dict[str, FileState]:
    plans = plan_instances(GPUS, cfg)
    contents = {UNIT_FILE: (ops.unit_text("/opt/v/bin/python", SCRIPT_PATH, CONFIG_PATH), 644),
                SCRIPT_PATH: (SCRIPT, 755),
                CONFIG_PATH: (ops.config_json(plans, limits or LIMITS, "/var/log/gpu-llm/watchdog.log",
                                              "/var/lib/gpu-llm/watchdog-state.json"), 600)}
    return {p: FileState("file", mode, "root", "root", hashlib.sha256(c).hexdigest()) for p, (c, mode) in contents.items()}


def facts(files: dict[str, FileState], active: str = "active", enabled: str = "enabled") -> dict[str, Any]:
    return {"NvidiaGpus": GpuInventory(smi="ok", gpus=GPUS), "Systemd": True, "FileStates": files,
            "Services": {UNIT: Service(active, enabled)}}


class FakeHost(opkit.FakeHost):
    def log(self, message: str) -> None:
        self.logs.append(message)


def run(facts: dict[str, Any], **kwargs: Any) -> opkit.Result:
    fake = FakeHost(facts)
    with ctx_state.use(opkit.FakeState(is_executing=True)), ctx_host.use(fake):
        commands = [opkit._text(c) for c in ops.watchdog._inner(**kwargs)]
    return opkit.Result(commands, fake.noops, fake.logs)


ABSENT = {p: FileState("absent") for p in (UNIT_FILE, SCRIPT_PATH, CONFIG_PATH)}


def test_fresh_host_gets_files_0600_config_and_a_started_enabled_unit() -> None:
    r = run(facts(ABSENT, "inactive", "not-found"), **args(config()))
    cmds = r.commands
    assert "( umask 077 && touch /etc/gpu-llm/watchdog.json ) && chmod 600 /etc/gpu-llm/watchdog.json" in cmds
    assert cmds[-3:] == ["systemctl daemon-reload", f"systemctl enable {UNIT}", f"systemctl start {UNIT}"]


def test_converged_host_is_a_noop() -> None:
    r = run(facts(installed_files(config())), **args(config()))
    assert r.commands == [] and "watches coder:8000" in r.noops[0]


def test_new_instances_rewrite_the_config_and_restart_without_daemon_reload() -> None:
    two = config(vllm_instances=[{"name": "qa", "port": 8000, "gpus": [0]}, {"name": "qb", "port": 8001, "gpus": [1]}])
    r = run(facts(installed_files(config())), **args(two))
    assert "systemctl daemon-reload" not in r.commands
    assert r.commands[-1] == f"systemctl restart {UNIT}"
    doc = json.loads(ops.config_json(plan_instances(GPUS, two), LIMITS, "l", "s"))
    assert [(i["container"], i["port"]) for i in doc["instances"]] == [("qa", 8000), ("qb", 8001)]


def test_api_key_stays_in_the_env_file_not_the_config() -> None:
    doc = json.loads(ops.config_json(plan_instances(GPUS, config(vllm_api_key="s3cret-key-1")), LIMITS, "l", "s"))
    assert "s3cret-key-1" not in json.dumps(doc) and doc["instances"][0]["env_file"].endswith(".env")


def test_a_stopped_service_is_started_and_a_changed_setting_restarts() -> None:
    r = run(facts(installed_files(config()), "failed"), **args(config()))
    assert r.commands == [f"systemctl start {UNIT}"]
    r = run(facts(installed_files(config())), **args(config(), limits={**LIMITS, "interval": 5}))
    assert r.commands[-1] == f"systemctl restart {UNIT}"


def test_disabled_stops_and_removes_it_then_noop() -> None:
    r = run(facts(installed_files(config())), **args(config(), enabled=False))
    assert r.commands[0] == f"systemctl disable --now {UNIT}"
    assert r.commands[-1] == "systemctl daemon-reload"
    r = run(facts(ABSENT, "inactive", "not-found"), **args(config(), enabled=False))
    assert r.commands == [] and r.noops


def test_without_systemd_it_fails_naming_the_setting() -> None:
    r = run({**facts(ABSENT), "Systemd": False}, **args(config()))
    assert len(r.commands) == 1 and "watchdog_enabled: false" in r.commands[0]
