"""Docker (Docker's repo or the distro's docker.io), NVIDIA Container Toolkit, daemon.json, GPU-safe udev rule."""

from __future__ import annotations

from pyinfra.api import deploy

from gpu_llm.deploys import FILES, host_settings
from gpu_llm.layout import DOCKER_CE_PACKAGES, DOCKER_SERVICE, KEYRINGS, NVCT_KEY, NVCT_PACKAGES, NVCT_SOURCE, UDEV_RULE
from gpu_llm.operations import docker as docker_ops
from gpu_llm.operations import files as gpu_files
from gpu_llm.operations import packages, shell
from gpu_llm.operations.services import service


@deploy("Install Docker and the NVIDIA Container Toolkit")
def docker() -> None:
    s = host_settings()
    repos = []
    if s.docker_package_source == "docker":
        repos.append(docker_ops.docker_repo(name="Add Docker's apt repository", base_url=s.docker_repo_url))
        docker_packages = list(DOCKER_CE_PACKAGES)
    else:
        docker_packages = ["docker.io"]
    url = s.container_toolkit_repo_url.rstrip("/")
    gpu_files.directory(name="Create /etc/apt/keyrings", path=KEYRINGS, mode="755")
    gpu_files.download(name="Download NVIDIA Container Toolkit's signing key", src=f"{url}/gpgkey", dest=NVCT_KEY,
                       mode="644", setting="container_toolkit_repo_url")
    repos.append(packages.repo(name="Add NVIDIA Container Toolkit's apt repository",
                               filename=NVCT_SOURCE,
                               src=f"deb [signed-by={NVCT_KEY}] {url}/stable/deb/amd64 /"))
    packages.update(name="Refresh apt lists for Docker and the Container Toolkit",
                    _if=lambda: any(r.did_change() for r in repos) or bool(packages.lists_missing()))
    packages.packages(name="Install Docker", packages=docker_packages)
    version = s.container_toolkit_version
    packages.packages(name="Install NVIDIA Container Toolkit",
                      packages=[f"{p}={version}" for p in NVCT_PACKAGES] if version else ["nvidia-container-toolkit"])
    runtime = docker_ops.nvidia_runtime(name="Register the NVIDIA runtime with Docker")
    config = docker_ops.daemon_json(name="Merge gpu-llm's keys into /etc/docker/daemon.json",
                                    config=s.docker_daemon_config)
    # after the config: a stopped Docker starts with it, and one run never starts then restarts Docker
    # (systemd's start limit for docker.service is 3 in 60 s; a repair soon after a converge would hit it)
    started = service(name="Enable and start Docker", service=DOCKER_SERVICE, running=True, enabled=True)
    rule = gpu_files.put(name="Keep GPUs in containers across systemctl daemon-reload (udev /dev/char links)",
                         content=(FILES / "71-nvidia-dev-char.rules").read_bytes(),
                         dest=UDEV_RULE, mode="644")
    shell(name="Create /dev/char links to the NVIDIA devices",
          # no driver loaded (GPU-less builder): the udev rule creates them when one binds
          commands=["if [ -d /proc/driver/nvidia ]; then nvidia-ctk system create-dev-char-symlinks --create-all; fi"],
          _if=rule.did_change)
    service(name="Restart Docker for its new configuration", service=DOCKER_SERVICE, restarted=True,
            _if=lambda: (runtime.did_change() or config.did_change()) and not started.did_change())
