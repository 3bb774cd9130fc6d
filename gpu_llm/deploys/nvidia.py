"""NVIDIA driver (pinned, held, nouveau off, reboot when needed; from NVIDIA's repository or, nvidia_driver_source:
ubuntu, Ubuntu's signed -server driver), the NVSwitch fabric manager and persistence mode, and the CUDA toolkit.

Vendor pinning: NVIDIA's driver installation guide ("Version locking", https://docs.nvidia.com/datacenter/tesla/
driver-installation-guide/version-locking.html) now offers nvidia-driver-pinning-<branch> packages for Ubuntu/Debian;
public install scripts use them for 580, 595 and 610, and we found no evidence of one for the 570 branch in NVIDIA's
ubuntu2404 repository (not verifiable offline). It also locks a branch, where gpu-llm pins one exact release across
both NVIDIA's repository and Ubuntu's archive (whose *-570 packages turned transitional to 580), so our own apt
preferences file (templates/nvidia-driver.pref.j2) stays."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, StrictUndefined
from pyinfra.api import deploy

from gpu_llm.deploys import FILES, TEMPLATES, host_settings
from gpu_llm.layout import DRIVER_PIN, NOUVEAU_CONF, UNATTENDED_CONF, cuda_toolkit_package
from gpu_llm.operations import files as gpu_files
from gpu_llm.operations import nvidia as nvidia_ops
from gpu_llm.operations import packages, services, shell
from gpu_llm.plan import ServeConfig, required_cuda
from gpu_llm.plan.datacenter import FABRIC_SERVICE


def render(template: Path, **data: str) -> bytes:
    """The template as files.template renders it (strict undefined, trailing newline kept)."""
    env = Environment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return env.from_string(template.read_text()).render(**data).encode()


@deploy("Install the NVIDIA driver and CUDA")
def nvidia() -> None:
    s = host_settings()
    driver_args = {"branch": s.nvidia_driver_branch, "version": s.nvidia_driver_version,
                   "open_modules": s.nvidia_driver_open, "source": s.nvidia_driver_source}

    def apt_driver() -> bool:  # False on a host whose non-apt driver we keep: no pin, blacklists or nouveau edits
        return not s.nvidia_driver_install or not nvidia_ops.keeps_foreign_driver(
            replace=s.nvidia_driver_replace, required_cuda=required_cuda(ServeConfig.from_settings(s)), **driver_args)

    if s.nvidia_driver_blacklist_nouveau:
        nouveau = gpu_files.put(name="Blacklist the nouveau kernel module",
                                content=(FILES / "gpu-llm-blacklist-nouveau.conf").read_bytes(), dest=NOUVEAU_CONF,
                                mode="644", _if=apt_driver)
        shell(name="Rebuild the initramfs without nouveau", commands=["update-initramfs -u"], _if=nouveau.did_change)
    if not (s.nvidia_driver_install or s.cuda_toolkit_install):
        return
    repo = nvidia_ops.cuda_repo(name="Add NVIDIA's CUDA repository", base_url=s.nvidia_cuda_repo_url,
                                keyring_version=s.nvidia_cuda_keyring_version)
    packages.update(name="Refresh apt lists for NVIDIA's repository",
                    _if=lambda: repo.did_change() or bool(packages.lists_missing()))
    if s.nvidia_driver_install:
        gpu_files.put(name=f"Pin NVIDIA driver {s.nvidia_driver_version} in apt preferences",
                      content=render(TEMPLATES / "nvidia-driver.pref.j2", version=s.nvidia_driver_version),
                      dest=DRIVER_PIN, mode="644", _if=apt_driver)
        gpu_files.put(name="Keep unattended-upgrades away from NVIDIA and CUDA packages",
                      content=(FILES / "51gpu-llm-unattended-upgrades").read_bytes(), dest=UNATTENDED_CONF,
                      mode="644", _if=apt_driver)
        nvidia_ops.driver(name=f"Install NVIDIA driver {s.nvidia_driver_version}", replace=s.nvidia_driver_replace,
                          required_cuda=required_cuda(ServeConfig.from_settings(s)), **driver_args)
        nvidia_ops.kernel_hold(name="Hold the kernel metapackages with Ubuntu's signed driver",
                               source=s.nvidia_driver_source, _if=apt_driver)
        nvidia_ops.reboot_for_driver(name="Reboot into the installed NVIDIA driver if needed",
                                     reboot=s.nvidia_driver_reboot, reboot_timeout=s.nvidia_driver_reboot_timeout,
                                     **driver_args)
        fm = nvidia_ops.fabric_manager(name="Install the NVSwitch fabric manager of the driver",
                                  branch=s.nvidia_driver_branch, version=s.nvidia_driver_version, _if=apt_driver)
        nvidia_ops.persistenced(name="Enable persistence mode (nvidia-persistenced)",
                                dropin=(FILES / "nvidia-persistenced-gpu-llm.conf").read_bytes())
    nvidia_ops.fabric_service(name="Enable and start the NVSwitch fabric manager")
    if s.nvidia_driver_install:  # an upgraded or replaced fabric manager runs its new binary only once restarted
        services.service(name="Restart the NVSwitch fabric manager after its upgrade", service=FABRIC_SERVICE,
                         restarted=True, _if=fm.did_change)
    nvidia_ops.fabric_ready(name="Wait until the NVSwitch fabric is completed", timeout=s.nvidia_fabric_timeout,
                            driver_version=s.nvidia_driver_version)
    if s.cuda_toolkit_install:
        packages.packages(name=f"Install CUDA toolkit {s.cuda_toolkit_version}",
                          packages=[cuda_toolkit_package(s.cuda_toolkit_version)])
