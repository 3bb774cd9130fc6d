"""Harness self-check deploy (not the product): the vendor repos, a pinned driver, docker + toolkit, a unit.

Used by tests/e2e/test_testbed.py to prove the testbed converges and re-runs with 0 changes; the product's
own convergence test runs the real deploy.py (tests/e2e/test_converge.py).
"""

from pyinfra import host
from pyinfra.operations import apt, files, server, systemd

CUDA = "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64"
DRIVER = host.data.get("smoke_driver", "570.153.02-0ubuntu1")

files.download(name="Download the cuda-keyring package", src=f"{CUDA}/cuda-keyring_1.1-1_all.deb",
               dest="/var/cache/cuda-keyring_1.1-1_all.deb")
apt.deb(name="Install cuda-keyring", src="/var/cache/cuda-keyring_1.1-1_all.deb")
files.download(name="Download Docker's key", src="https://download.docker.com/linux/ubuntu/gpg",
               dest="/etc/apt/keyrings/docker.asc", mode="644")
files.download(name="Download the container toolkit key", src="https://nvidia.github.io/libnvidia-container/gpgkey",
               dest="/etc/apt/keyrings/nvidia-container-toolkit.asc", mode="644")
apt.repo(name="Add Docker's repo", filename="docker",
         src="deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu noble stable")
apt.repo(name="Add the container toolkit repo", filename="nvidia-container-toolkit",
         src="deb [signed-by=/etc/apt/keyrings/nvidia-container-toolkit.asc] "
             "https://nvidia.github.io/libnvidia-container/stable/deb/amd64 /")
pkgs = apt.packages(name="Install the pinned driver, docker-ce and the toolkit", update=True, cache_time=3600,
                    packages=[f"nvidia-driver-570-open={DRIVER}", f"nvidia-utils-570={DRIVER}",
                              f"nvidia-dkms-570-open={DRIVER}", f"nvidia-compute-utils-570={DRIVER}", "docker-ce",
                              "nvidia-container-toolkit"])
server.reboot(name="Reboot to load the new driver", _if=pkgs.did_change)
server.shell(name="Configure docker's nvidia runtime", commands=["nvidia-ctk runtime configure --runtime=docker"],
             _if=pkgs.did_change)
systemd.service(name="Restart docker", service="docker", running=True, restarted=True, _if=pkgs.did_change)
