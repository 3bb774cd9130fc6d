"""A service running/enabled/restarted, its state from the host snapshot (pyinfra's systemd.service reads two facts
per call, and fails outright on a host whose systemctl exists but whose PID 1 is not systemd)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand

from gpu_llm.facts import snapshot
from gpu_llm.operations import operation


def service_commands(name: str, systemd: bool, active: str, enabled: str, running: bool, is_enabled: bool,
                     restarted: bool, daemon_reload: bool = False) -> list[StringCommand]:
    """Commands taking a service from its (active, enabled) state to the wanted one (pure); `daemon_reload` first
    when its unit file was just written."""
    unit = QuoteString(name)
    if not systemd:  # containers, chroots: the init script (sysvinit.service's commands)
        if restarted:
            return [StringCommand("service", unit, "restart")]
        return [StringCommand("service", unit, "start")] if running and active != "active" else []
    commands = [StringCommand("systemctl", "daemon-reload")] if daemon_reload else []
    if is_enabled and enabled != "enabled":
        commands.append(StringCommand("systemctl", "enable", unit))
    if restarted:
        commands.append(StringCommand("systemctl", "restart", unit))
    elif running and active != "active":
        commands.append(StringCommand("systemctl", "start", unit))
    return commands


@operation()
def service(service: str, running: bool = True, enabled: bool = True, restarted: bool = False):
    """
    `service` is running and enabled (systemd where it is PID 1, else the init script); `restarted` restarts it.

    + service: unit name without .service, e.g. "docker"; it must be in the snapshot's probe (gpu_llm.layout)
    + running / enabled: wanted state
    + restarted: restart it (use with _if=...)

    **Example:**

    .. code:: python

        services.service(name="Enable and start Docker", service="docker")
    """
    now = snapshot.current(host)
    unit = now.service(service)
    commands = service_commands(service, now.systemd, unit.active, unit.enabled, running, enabled, restarted)
    if not commands:
        host.noop(f"service {service} is {unit.active or 'running'}" + (f" and {unit.enabled}" if unit.enabled else ""))
    yield from commands
