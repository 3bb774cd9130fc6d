"""Docker (Docker's repo or the distro's docker.io), NVIDIA Container Toolkit, daemon.json, GPU-safe udev rule."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, server

from gpu_llm.deploys import FILES, managed_paths, service
from gpu_llm.operations import docker as docker_ops
from gpu_llm.operations import files as gpu_files
from gpu_llm.operations import packages
from gpu_llm.operations.docker import KEY_FILES, KEYRINGS, NVCT_KEY
from gpu_llm.settings import for_host

UDEV_RULE = "/etc/udev/rules.d/71-nvidia-dev-char.rules"
NVCT_PACKAGES = ("nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools",
                 "libnvidia-container1")  # pinned together, as NVIDIA's install guide does


def paths() -> tuple[str, ...]:
    """What docker() and Docker's repository put, create or download."""
    return (*KEY_FILES, UDEV_RULE)


@deploy("Install Docker and the NVIDIA Container Toolkit")
def docker() -> None:
    s = for_host(host)
    batch = managed_paths(s)  # every deploy's files: their state is read in one command
    repos = []
    if s.docker_package_source == "docker":
        repos.append(docker_ops.docker_repo(name="Add Docker's apt repository", base_url=s.docker_repo_url,
                                                batch=batch))
        docker_packages = ["docker-ce", "docker-ce-cli", "containerd.io"]
    else:
        docker_packages = ["docker.io"]
    url = s.container_toolkit_repo_url.rstrip("/")
    gpu_files.directory(name="Create /etc/apt/keyrings", path=KEYRINGS, mode="755", batch=batch)
    gpu_files.download(name="Download NVIDIA Container Toolkit's signing key", src=f"{url}/gpgkey", dest=NVCT_KEY,
                       mode="644", setting="container_toolkit_repo_url", batch=batch)
    repos.append(packages.repo(name="Add NVIDIA Container Toolkit's apt repository",
                               filename="nvidia-container-toolkit",
                               src=f"deb [signed-by={NVCT_KEY}] {url}/stable/deb/amd64 /"))
    apt.update(name="Refresh apt lists for Docker and the Container Toolkit",
               _if=lambda: any(r.did_change() for r in repos))
    packages.packages(name="Install Docker", packages=docker_packages)
    version = s.container_toolkit_version
    packages.packages(name="Install NVIDIA Container Toolkit",
                      packages=[f"{p}={version}" for p in NVCT_PACKAGES] if version else ["nvidia-container-toolkit"])
    runtime = docker_ops.nvidia_runtime(name="Register the NVIDIA runtime with Docker")
    config = docker_ops.daemon_json(name="Merge gpu-llm's keys into /etc/docker/daemon.json",
                                    config=s.docker_daemon_config)
    # after the config: a stopped Docker starts with it, and one run never starts then restarts Docker
    # (systemd's start limit for docker.service is 3 in 60 s; a repair soon after a converge would hit it)
    started = service(name="Enable and start Docker", service="docker", running=True, enabled=True)
    rule = gpu_files.put(name="Keep GPUs in containers across systemctl daemon-reload (udev /dev/char links)",
                         content=(FILES / "71-nvidia-dev-char.rules").read_bytes(),
                         dest=UDEV_RULE, mode="644", batch=batch)
    server.shell(name="Create /dev/char links to the NVIDIA devices",
                 # no driver loaded (GPU-less builder): the udev rule creates them when one binds
                 commands=["if [ -d /proc/driver/nvidia ]; then nvidia-ctk system create-dev-char-symlinks --create-all; fi"], _if=rule.did_change)
    service(name="Restart Docker for its new configuration", service="docker", restarted=True,
                    _if=lambda: (runtime.did_change() or config.did_change()) and not started.did_change())
