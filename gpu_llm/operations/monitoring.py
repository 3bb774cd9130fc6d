"""Operations of the monitoring: a service's configuration files (written, checked, the service
restarted only when one changed, then waited for), and the DCGM exporter container. State from the host snapshot."""

from __future__ import annotations

import hashlib
from io import BytesIO
from typing import Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand

from gpu_llm.facts import snapshot
from gpu_llm.operations import operation
from gpu_llm.operations.services import service_commands
from gpu_llm.operations.vllm import fail
from gpu_llm.plan.container import SPEC_LABEL, spec_hash

BACKUP_SUFFIX = ".before-gpu-llm"


def changed_files(files: dict[str, tuple[bytes, str]], states: dict[str, Any]) -> list[str]:
    """Paths whose content or mode differ from `files` ({path: (content, octal mode)})."""
    out = []
    for path, (content, mode) in files.items():
        st = states.get(path)
        same = (st is not None and st.kind == "file" and st.sha256 == hashlib.sha256(content).hexdigest()
                and st.mode == int(mode))
        if not same:
            out.append(path)
    return out


@operation()
def configured_service(unit: str, files: dict[str, tuple[bytes, str]], check: list[str] | None = None,
                       ready_url: str | None = None, backup: tuple[str, ...] = (), secret: tuple[str, ...] = (),
                       timeout_s: int = 120):
    """
    `files` ({path: (content, mode)}) in place and `unit` enabled and running; restarted only when one of them
    changed (a drop-in under /etc/systemd/system reloads systemd first), then `ready_url` waited for.

    + check: a command validating the new files before the restart (e.g. promtool check config); failing, the host
      fails with its output and the running service keeps its old configuration in memory
    + backup: paths of package-shipped files we replace: copied once to <path>.before-gpu-llm (nothing a user had is
      lost silently)
    + secret: paths whose content is secret: created 0600 before the upload, never shown

    **Example:**

    .. code:: python

        configured_service(name="Configure Prometheus", unit="prometheus",
                           files={"/etc/prometheus/prometheus.yml": (b"...", "644")},
                           check=["promtool", "check", "config", "/etc/prometheus/prometheus.yml"],
                           ready_url="http://127.0.0.1:9090/-/ready")
    """
    now = snapshot.current(host)
    if not now.systemd:
        yield fail(f"{unit} runs as a systemd service and systemd is not PID 1 on this host")
        return
    changed = changed_files(files, now.files)
    service = now.service(unit)
    commands: list[Any] = []
    for path in changed:
        content, mode = files[path]
        parent = path.rsplit("/", 1)[0] or "/"
        commands.append(StringCommand("mkdir", "-p", QuoteString(parent)))
        if path in backup:
            commands.append(StringCommand("[", "-e", QuoteString(path + BACKUP_SUFFIX), "]", "||", "[", "!", "-f",
                                          QuoteString(path), "]", "||", "cp", "-p", QuoteString(path),
                                          QuoteString(path + BACKUP_SUFFIX)))
        if path in secret:
            commands.append(StringCommand("(", "umask", "077", "&&", "touch", QuoteString(path), ")", "&&",
                                          "chmod", "600", QuoteString(path)))
        commands.append(FileUploadCommand(BytesIO(content), path))
        commands.append(StringCommand("chmod", mode, QuoteString(path)))
    if changed and check:
        commands.append(StringCommand(*(QuoteString(c) for c in check)))
    reload = any(p.startswith("/etc/systemd/system/") for p in changed)
    commands += service_commands(unit, True, service.active, service.enabled, running=True, is_enabled=True,
                                 restarted=bool(changed) and service.active == "active", daemon_reload=reload)
    if not commands:
        host.noop(f"{unit} is active with its current configuration")
        return
    host.log(f"{unit}: {'changed: ' + ', '.join(changed) + '; ' if changed else ''}"
             f"{'restart' if service.active == 'active' else 'start'}")
    yield from commands
    if ready_url:
        yield StringCommand(ready_loop(ready_url, timeout_s, f"{unit} did not answer {ready_url} within {timeout_s} s; "
                                                             f"see journalctl -u {unit}"))


def ready_loop(url: str, timeout_s: int, message: str) -> str:
    """Shell: wait up to `timeout_s` seconds for `url` to answer 2xx, else fail with `message`."""
    import shlex

    q = shlex.quote(url)
    return (f"for i in $(seq {int(timeout_s)}); do curl -sf -o /dev/null {q} && exit 0; sleep 1; done; "
            f"echo {shlex.quote(message)} >&2; exit 1")


def exporter_spec(name: str, image: str, bind: str, port: int, memlock: str | None = None) -> dict[str, Any]:
    """What defines the DCGM exporter's container (NVIDIA's documented run: --gpus all --cap-add SYS_ADMIN, port
    9400 in the container; https://github.com/NVIDIA/dcgm-exporter#quickstart). `memlock`: the vLLM containers'
    memlock limit (vllm_ulimits), else the daemon's default-ulimits apply (memlock -1, which a host without
    CAP_SYS_RESOURCE cannot grant)."""
    spec: dict[str, Any] = {"name": name, "image": image, "gpus": "all", "cap_add": ["SYS_ADMIN"],
                            "restart": "always", "ports": [f"{bind}:{port}:9400"]}
    if memlock is not None:
        spec["ulimits"] = {"memlock": memlock}
    return spec


def exporter_run_args(spec: dict[str, Any]) -> list[str]:
    args = ["run", "-d", "--name", spec["name"], "--label", f"{SPEC_LABEL}={spec_hash(spec)}",
            "--gpus", spec["gpus"], "--restart", spec["restart"]]
    for cap in spec["cap_add"]:
        args += ["--cap-add", cap]
    for limit, value in (spec.get("ulimits") or {}).items():
        args += ["--ulimit", f"{limit}={value}"]
    for port in spec["ports"]:
        args += ["-p", port]
    return args + [spec["image"]]


@operation()
def exporter_container(spec: dict[str, Any]):
    """
    The DCGM exporter runs as `spec` (labelled with its hash: a different spec recreates it; stopped: started).
    Not labelled gpu-llm.managed, so the vLLM step never takes it for one of its instances.

    **Example:**

    .. code:: python

        exporter_container(name="Run the DCGM exporter", spec=exporter_spec("gpu-llm-dcgm-exporter", IMAGE,
                           "10.0.0.5", 9400))
    """
    wanted = spec_hash(spec)
    current = {c["Name"].lstrip("/"): c for c in snapshot.current(host).containers}.get(spec["name"])
    labels = ((current or {}).get("Config") or {}).get("Labels") or {}
    if current is not None and labels.get(SPEC_LABEL) == wanted:
        if (current.get("State") or {}).get("Running"):
            host.noop(f"container {spec['name']} runs spec {wanted[:12]}")
            return
        yield StringCommand("docker", "start", QuoteString(spec["name"]))
        return
    host.log(f"container {spec['name']}: (re)create ({'missing' if current is None else 'spec changed'})")
    image = QuoteString(spec["image"])
    yield StringCommand("docker", "image", "inspect", image, ">/dev/null", "2>&1", "||", "docker", "pull", "--quiet",
                        image)
    if current is not None:
        yield StringCommand("docker", "rm", "-f", QuoteString(spec["name"]))
    yield StringCommand("docker", *(QuoteString(a) for a in exporter_run_args(spec)))


@operation()
def container_absent(container: str):
    """The container `container` does not exist (the DCGM exporter turned off)."""
    if any(c["Name"].lstrip("/") == container for c in snapshot.current(host).containers):
        yield StringCommand("docker", "rm", "-f", QuoteString(container))
    else:
        host.noop(f"no container {container}")
