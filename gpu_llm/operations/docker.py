"""Docker's apt repository, the NVIDIA runtime in Docker and gpu-llm's keys merged into /etc/docker/daemon.json."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api import StringCommand, operation
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import files

from gpu_llm.facts import memo
from gpu_llm.facts.docker_daemon import DAEMON_JSON, DockerDaemonJson
from gpu_llm.operations import download_naming_url, packages, refuse
from gpu_llm.operations import files as gpu_files

KEYRINGS = "/etc/apt/keyrings"
DOCKER_KEY = f"{KEYRINGS}/docker.asc"
NVCT_KEY = f"{KEYRINGS}/nvidia-container-toolkit.asc"
KEY_FILES = (KEYRINGS, DOCKER_KEY, NVCT_KEY)  # their state is read in one command
DOCKER_DISTROS = ("ubuntu", "debian")


def docker_source(base_url: str, distro: dict) -> str | None:
    """Docker's one-line apt source for this distro (docs.docker.com/engine/install/ubuntu), None if unsupported."""
    meta = distro.get("release_meta") or {}
    distro_name, codename = meta.get("ID", "").lower(), meta.get("VERSION_CODENAME", "")
    if distro_name not in DOCKER_DISTROS or not codename:
        return None
    return f"deb [arch=amd64 signed-by={DOCKER_KEY}] {base_url.rstrip('/')}/{distro_name} {codename} stable"


def merge(current: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """`current` with `ours` laid over it: nested objects merge key by key, anything else of ours wins (pure)."""
    merged = dict(current)
    for key, value in ours.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@operation()
def docker_repo(base_url: str, batch: tuple[str, ...] = ()):
    """
    Add Docker's apt repository for the host's distro, its key in /etc/apt/keyrings (signed-by).

    + base_url: Docker's repository root, e.g. https://download.docker.com/linux
    + batch: paths whose state is read with the keyrings (gpu_llm.operations.files)

    **Example:**

    .. code:: python

        docker.docker_repo(name="Add Docker's apt repository", base_url="https://download.docker.com/linux")
    """
    distro = memo.fact(host, LinuxDistribution)
    source = docker_source(base_url, distro)
    if source is None:
        yield refuse(f"Docker's repository has no packages for {distro.get('name')} {distro.get('major')}; "
                     'set docker_package_source: "ubuntu" to use the distro\'s docker.io')
        return
    distro_name = distro["release_meta"]["ID"].lower()
    batch = (*batch, *KEY_FILES)
    yield from gpu_files.directory._inner(path=KEYRINGS, mode="755", batch=batch)
    if not gpu_files.downloaded(DOCKER_KEY, "644", batch=batch):
        yield from download_naming_url(f"{base_url.rstrip('/')}/{distro_name}/gpg", DOCKER_KEY, "docker_repo_url")
    yield from packages.repo._inner(src=source, filename="docker")


@operation()
def nvidia_runtime():
    """
    Register the NVIDIA runtime with Docker (`nvidia-ctk runtime configure --runtime=docker`) unless
    daemon.json already has runtimes.nvidia.

    **Example:**

    .. code:: python

        docker.nvidia_runtime(name="Register the NVIDIA runtime with Docker")
    """
    daemon = memo.fact(host, DockerDaemonJson)
    if daemon.error:
        yield refuse(daemon.error + "; fix or remove it")
        return
    if "nvidia" in (daemon.data.get("runtimes") or {}):
        host.noop(f"{DAEMON_JSON} has runtimes.nvidia")
        return
    yield StringCommand("nvidia-ctk", "runtime", "configure", "--runtime=docker")
    memo.forget(host, DockerDaemonJson)


@operation()
def daemon_json(config: dict[str, Any]):
    """
    Merge `config` into /etc/docker/daemon.json, keeping every other key; write only when the result differs.

    + config: keys to set, e.g. {"log-driver": "json-file"}

    **Example:**

    .. code:: python

        docker.daemon_json(name="Merge gpu-llm's keys into daemon.json", config={"log-driver": "json-file"})
    """
    daemon = memo.fact(host, DockerDaemonJson)
    if daemon.error:
        yield refuse(daemon.error + "; fix or remove it")
        return
    merged = merge(daemon.data, config)
    if daemon.exists and merged == daemon.data:
        host.noop(f"{DAEMON_JSON} has " + ", ".join(sorted(config)))
        return
    text = json.dumps(merged, indent=4, sort_keys=True) + "\n"
    yield from files.directory._inner(path="/etc/docker", mode="755")
    yield from files.put._inner(src=StringIO(text), dest=DAEMON_JSON, mode="644")
    memo.forget(host, DockerDaemonJson)
