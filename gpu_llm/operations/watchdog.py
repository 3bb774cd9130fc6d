"""The hang watchdog on a GPU host: its script, its config (the host's planned instances), its systemd unit, running.

One operation, planned at execution from the host's GPU fact like the containers (operations/vllm.py), its state read
from the host snapshot (files' sha256/mode, the unit's active/enabled): a converged host costs no command.
"""

from __future__ import annotations

import json
from typing import Any

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand

from gpu_llm.facts import snapshot
from gpu_llm.operations import files as gpu_files
from gpu_llm.operations import operation
from gpu_llm.operations.services import service_commands
from gpu_llm.operations.vllm import NotPlannable, fail, host_plans
from gpu_llm.plan import InstancePlan, ServeConfig


def config_json(plans: list[InstancePlan], settings: dict[str, int], log_file: str, state_file: str) -> bytes:
    """The watchdog's config file: one entry per instance (the API key stays in the instance's 0600 env file)."""
    doc = {
        "instances": [{"container": p.container_name, "port": p.port, "model": p.served_model_name,
                       "env_file": p.env_file} for p in plans],
        "settings": settings,
        "log_file": log_file,
        "state_file": state_file,
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def unit_text(python: str, script: str, config: str) -> bytes:
    return (
        "# gpu-llm: managed by pyinfra (gpu_llm/deploys/watchdog.py); edits are overwritten\n"
        "[Unit]\n"
        "Description=gpu-llm watchdog: restart a vLLM container whose engine hangs\n"
        "After=docker.service\n"
        "Wants=docker.service\n\n"
        "[Service]\n"
        f"ExecStart={python} {script} --config {config}\n"
        "Restart=always\n"
        "RestartSec=5\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    ).encode()


@operation()
def watchdog(config: ServeConfig, enabled: bool, unit: str, unit_file: str, python: str, script_path: str,
             script: bytes, config_path: str, settings: dict[str, int], log_file: str, state_file: str):
    """
    The watchdog service runs with the host's current instances (or, disabled, is stopped and its files removed).

    + config: the host's plan input (its instances: names, ports, served names, env files)
    + enabled: watchdog_enabled
    + unit / unit_file: systemd unit name and its file
    + python / script_path / script: interpreter on the host, where the script lands, its content
    + config_path: the JSON config's path (0600); settings: interval, stall_seconds, start_grace, probe_timeout,
      probe_failures, max_restarts_per_hour
    + log_file / state_file: where the watchdog logs and keeps its restart times

    **Example:**

    .. code:: python

        watchdog(name="Run the hang watchdog", config=ServeConfig.from_settings(s), enabled=True, ...)
    """
    now = snapshot.current(host)
    service = now.service(unit)
    files = {path: now.files.get(path) for path in (unit_file, script_path, config_path)}
    if not enabled:
        commands = []
        if service.active == "active" or service.enabled == "enabled":
            commands.append(StringCommand("systemctl", "disable", "--now", QuoteString(unit)))
        present = [p for p, st in files.items() if st is not None and st.kind == "file"]
        if present:
            commands.append(StringCommand("rm", "-f", *(QuoteString(p) for p in present)))
            if unit_file in present:
                commands.append(StringCommand("systemctl", "daemon-reload"))
        if not commands:
            host.noop("watchdog disabled (watchdog_enabled: false) and not installed")
        yield from commands
        return
    if not now.systemd:
        yield fail("the watchdog runs as a systemd service and systemd is not PID 1 on this host; "
                   "set watchdog_enabled: false")
        return
    try:
        plans = host_plans(config)
    except NotPlannable as exc:
        yield fail(str(exc))
        return
    wanted = {
        unit_file: (unit_text(python, script_path, config_path), 644),
        script_path: (script, 755),
        config_path: (config_json(plans, settings, log_file, state_file), 600),
    }
    commands: list[Any] = []
    changed = set()
    for path, (content, mode) in wanted.items():
        cmds = gpu_files.file_commands(path, content, mode, files[path])
        if cmds:
            changed.add(path)
        commands += cmds
    commands += service_commands(unit, True, service.active, service.enabled, running=True, is_enabled=True,
                                 restarted=service.active == "active" and bool(changed),
                                 daemon_reload=unit_file in changed)
    if not commands:
        host.noop(f"watchdog {unit} is {service.active} and watches "
                  + ", ".join(f"{p.container_name}:{p.port}" for p in plans))
        return
    host.log(f"watchdog: {', '.join(sorted(changed)) or 'service state'} -> watching "
             + ", ".join(f"{p.container_name}:{p.port}" for p in plans))
    yield from commands
