"""NVIDIA driver (pinned, held, nouveau off, reboot when needed) and the CUDA toolkit from NVIDIA's repository."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server

from gpu_llm.deploys import FILES, TEMPLATES
from gpu_llm.operations import nvidia as nvidia_ops
from gpu_llm.plan import required_cuda
from gpu_llm.settings import for_host


@deploy("NVIDIA driver and CUDA")
def nvidia() -> None:
    s = for_host(host)
    if s.nvidia_driver_blacklist_nouveau:
        nouveau = files.put(name="Blacklist the nouveau kernel module", src=str(FILES / "gpu-llm-blacklist-nouveau.conf"),
                            dest="/etc/modprobe.d/gpu-llm-blacklist-nouveau.conf", mode="644")
        server.shell(name="Rebuild the initramfs without nouveau", commands=["update-initramfs -u"],
                     _if=nouveau.did_change)
    if not (s.nvidia_driver_install or s.cuda_toolkit_install):
        return
    repo = nvidia_ops.cuda_repo(name="Add NVIDIA's CUDA repository", base_url=s.nvidia_cuda_repo_url,
                                keyring_version=s.nvidia_cuda_keyring_version)
    apt.update(name="Refresh apt lists for NVIDIA's repository", _if=repo.did_change)
    if s.nvidia_driver_install:
        files.template(name=f"Pin NVIDIA driver {s.nvidia_driver_version} in apt preferences",
                       src=str(TEMPLATES / "nvidia-driver.pref.j2"),
                       dest="/etc/apt/preferences.d/gpu-llm-nvidia-driver", mode="644",
                       version=s.nvidia_driver_version)
        files.put(name="Keep unattended-upgrades away from NVIDIA and CUDA packages",
                  src=str(FILES / "51gpu-llm-unattended-upgrades"),
                  dest="/etc/apt/apt.conf.d/51gpu-llm-unattended-upgrades", mode="644")
        driver_args = {"branch": s.nvidia_driver_branch, "version": s.nvidia_driver_version,
                       "open_modules": s.nvidia_driver_open}
        nvidia_ops.driver(name=f"Install NVIDIA driver {s.nvidia_driver_version}", replace=s.nvidia_driver_replace,
                          required_cuda=required_cuda(s), **driver_args)
        nvidia_ops.reboot_for_driver(name="Reboot into the installed NVIDIA driver if needed",
                                     reboot=s.nvidia_driver_reboot, reboot_timeout=s.nvidia_driver_reboot_timeout,
                                     **driver_args)
    if s.cuda_toolkit_install:
        apt.packages(name=f"Install CUDA toolkit {s.cuda_toolkit_version}",
                     packages=["cuda-toolkit-" + s.cuda_toolkit_version.replace(".", "-")])
