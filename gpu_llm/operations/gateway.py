"""Operations of the gateway host: vllm-router's venv, its systemd unit (restarted only when it changed), and an
end-to-end check through it. State from the host snapshot (files' sha256, the unit's state)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from io import BytesIO

from pyinfra import host, state
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand

from gpu_llm.facts import snapshot
from gpu_llm.facts.gateway import GatewayCheck
from gpu_llm.operations import operation
from gpu_llm.operations.services import service_commands
from gpu_llm.operations.vllm import fail

from gpu_llm.layout import GATEWAY_VENV_MARKER as MARKER


def marker_path(venv: str) -> str:
    return f"{venv}/{MARKER}"


def marker_content(requirement: str, pip_args: list[str]) -> str:
    return "\n".join([requirement, *(f"pip-arg {a}" for a in pip_args)]) + "\n"


@operation()
def barrier():
    """
    Nothing: an operation every host runs at the same place, so that pyinfra runs what follows it on any host only
    after what precedes it on every host.
    """
    host.noop("every host reached this step")
    return
    yield  # a generator, like every operation


@operation()
def venv(path: str, requirement: str, pip_args: list[str]):
    """
    A venv at `path` with `requirement` installed by pip; a marker written after pip succeeded makes re-runs noop.

    **Example:**

    .. code:: python

        venv(name="Install vllm-router", path="/opt/gpu-llm/gateway-venv", requirement="vllm-router==0.1.17",
             pip_args=[])
    """
    wanted = marker_content(requirement, pip_args)
    current = snapshot.current(host).files.get(marker_path(path))
    if current is not None and current.kind == "file" and current.sha256 == hashlib.sha256(wanted.encode()).hexdigest():
        host.noop(f"venv {path} has {requirement}")
        return
    yield StringCommand("python3", "-m", "venv", QuoteString(path))
    yield StringCommand(QuoteString(f"{path}/bin/pip"), "install", "--quiet", "--disable-pip-version-check",
                        *(QuoteString(a) for a in pip_args), QuoteString(requirement))
    yield FileUploadCommand(BytesIO(wanted.encode()), marker_path(path))


@operation()
def router(unit: str, unit_file: str, content: bytes, venv_changed: Callable[[], bool] = lambda: False):
    """
    `unit_file` holds `content` and `unit` runs enabled; restarted only when the unit or the venv changed.

    **Example:**

    .. code:: python

        router(name="Run vllm-router", unit="gpu-llm-gateway.service", unit_file="/etc/systemd/system/...",
               content=b"[Unit]...")
    """
    now = snapshot.current(host)
    if not now.systemd:
        yield fail("the gateway runs as a systemd service and systemd is not PID 1 on this host")
        return
    service = now.service(unit)
    changed = not _holds(now, unit_file, content)
    commands = ([FileUploadCommand(BytesIO(content), unit_file), StringCommand("chmod", "644", QuoteString(unit_file))]
                if changed else [])
    commands += service_commands(unit, True, service.active, service.enabled, running=True, is_enabled=True,
                                 restarted=service.active == "active" and (changed or venv_changed()),
                                 daemon_reload=changed)
    if not commands:
        host.noop(f"{unit} is active with its current configuration")
        return
    host.log(f"{unit}: {'new configuration, ' if changed else ''}{'restart' if service.active == 'active' else 'start'}")
    yield from commands


def _holds(now: snapshot.HostState, path: str, content: bytes) -> bool:
    current = now.files.get(path)
    return current is not None and current.kind == "file" and current.sha256 == hashlib.sha256(content).hexdigest()


@operation()
def tls_front(unit: str, unit_file: str, unit_content: bytes, config_path: str, config: bytes | None,
              restart_when: Callable[[], bool] = lambda: False):
    """
    HTTPS in front of the router: `config_path` holds HAProxy's `config` and `unit` (from `unit_content`) runs
    enabled, restarted when either changed or `restart_when()` (the certificate); `config=None` (plain HTTP): the
    unit is stopped, disabled and its files removed.

    **Example:**

    .. code:: python

        tls_front(name="Serve HTTPS", unit="gpu-llm-gateway-tls.service", unit_file="/etc/systemd/system/...",
                  unit_content=b"[Unit]...", config_path="/etc/gpu-llm/gateway-tls.cfg", config=b"global...")
    """
    now = snapshot.current(host)
    service = now.service(unit)
    if config is None:
        present = [p for p in (unit_file, config_path) if p in now.files and now.files[p].kind != "absent"]
        if not present and service.active != "active" and service.enabled != "enabled":
            host.noop(f"{unit} is absent (plain HTTP)")
            return
        if service.active == "active" or service.enabled == "enabled":
            yield StringCommand("systemctl", "disable", "--now", QuoteString(unit))
        if present:
            yield StringCommand("rm", "-f", *(QuoteString(p) for p in present))
            yield StringCommand("systemctl", "daemon-reload")
        return
    if not now.systemd:
        yield fail("the gateway runs as a systemd service and systemd is not PID 1 on this host")
        return
    unit_changed = not _holds(now, unit_file, unit_content)
    config_changed = not _holds(now, config_path, config)
    commands: list = []
    if config_changed:
        commands += [FileUploadCommand(BytesIO(config), config_path), StringCommand("chmod", "644", QuoteString(config_path))]
    if unit_changed:
        commands += [FileUploadCommand(BytesIO(unit_content), unit_file), StringCommand("chmod", "644", QuoteString(unit_file))]
    commands += service_commands(unit, True, service.active, service.enabled, running=True, is_enabled=True,
                                 restarted=service.active == "active" and (unit_changed or config_changed or restart_when()),
                                 daemon_reload=unit_changed)
    if not commands:
        host.noop(f"{unit} is active with its current configuration and certificate")
        return
    yield from commands


@operation(is_idempotent=False)
def verified(port: int, header_file: str, model: str, backends: int, timeout_s: int = 120, tls_pem: str | None = None,
             address: str = "127.0.0.1"):
    """Through the gateway: /v1/models lists `model` and one 1-token chat completion answers (the key from the
    0600 header file, never on a command line); with `tls_pem`, over HTTPS, and the certificate served must be the
    first one in that file. A check: never a change; a failure fails the host."""
    if not state.is_executing:
        return
    result = host.get_fact(GatewayCheck, port=port, header_file=header_file, model=model, timeout_s=timeout_s,
                           tls_pem=tls_pem, address=address)
    scheme = "https" if tls_pem else "http"
    if result.get("ok"):
        host.log(f"gateway on {scheme}://{address}:{port} answers for {model} ({backends} backend(s)): "
                 f"{json.dumps(result)}")
        return
    yield fail(f"gateway check on {scheme}://{address}:{port} failed: {result.get('error') or result}")
