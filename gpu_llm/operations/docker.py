"""Docker's apt repository, the NVIDIA runtime in Docker and gpu-llm's keys merged into /etc/docker/daemon.json."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api import StringCommand
from pyinfra.operations import files

from gpu_llm.facts import snapshot
from gpu_llm.facts.docker_daemon import DAEMON_JSON
from gpu_llm.layout import DOCKER_KEY, DOCKER_SOURCE, KEYRINGS
from gpu_llm.operations import download_naming_url, operation, packages, refuse
from gpu_llm.operations import files as gpu_files

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
def docker_repo(base_url: str):
    """
    Add Docker's apt repository for the host's distro, its key in /etc/apt/keyrings (signed-by).

    + base_url: Docker's repository root, e.g. https://download.docker.com/linux

    **Example:**

    .. code:: python

        docker.docker_repo(name="Add Docker's apt repository", base_url="https://download.docker.com/linux")
    """
    distro = snapshot.current(host).distro
    source = docker_source(base_url, distro)
    if source is None:
        yield refuse(f"Docker's repository has no packages for {distro.get('name')} {distro.get('major')}; "
                     'set docker_package_source: "ubuntu" to use the distro\'s docker.io')
        return
    distro_name = distro["release_meta"]["ID"].lower()
    yield from gpu_files.directory._inner(path=KEYRINGS, mode="755")
    if not gpu_files.downloaded(DOCKER_KEY, "644"):
        yield from download_naming_url(f"{base_url.rstrip('/')}/{distro_name}/gpg", DOCKER_KEY, "docker_repo_url")
    yield from packages.repo._inner(src=source, filename=DOCKER_SOURCE)


@operation()
def nvidia_runtime():
    """
    Register the NVIDIA runtime with Docker (`nvidia-ctk runtime configure --runtime=docker`) unless
    daemon.json already has runtimes.nvidia.

    **Example:**

    .. code:: python

        docker.nvidia_runtime(name="Register the NVIDIA runtime with Docker")
    """
    daemon = snapshot.current(host).daemon
    if daemon.error:
        yield refuse(daemon.error + "; fix or remove it")
        return
    if "nvidia" in (daemon.data.get("runtimes") or {}):
        host.noop(f"{DAEMON_JSON} has runtimes.nvidia")
        return
    yield StringCommand("nvidia-ctk", "runtime", "configure", "--runtime=docker")


@operation()
def daemon_json(config: dict[str, Any]):
    """
    Merge `config` into /etc/docker/daemon.json, keeping every other key; write only when the result differs.

    + config: keys to set, e.g. {"log-driver": "json-file"}

    **Example:**

    .. code:: python

        docker.daemon_json(name="Merge gpu-llm's keys into daemon.json", config={"log-driver": "json-file"})
    """
    daemon = snapshot.current(host).daemon
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
