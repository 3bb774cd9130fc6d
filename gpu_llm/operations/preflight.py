"""Preflight: refuse a host that cannot run gpu-llm before anything on it changes."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import StringCommand

from gpu_llm.facts import snapshot
from gpu_llm.facts.host import HostPreflight
from gpu_llm.operations import operation, refuse

SUPPORTED_ARCH = "x86_64"
KIB_PER_GIB = 1024 * 1024


def problems(info: HostPreflight, supported_os: list[str], required_gib: float, require_gpu: bool,
             gpus_needed: tuple[int, str] = (1, ""), disk_for: str = "model + preflight_image_gib") -> list[str]:
    """Every reason this host cannot be provisioned (empty: it can)."""
    found = []
    if info.os_id not in supported_os:
        found.append(f"unsupported OS {info.os_name or info.os_id or 'unknown'} ({info.os_id or 'no /etc/os-release'});"
                     f" preflight_supported_os allows {', '.join(supported_os)}")
    if info.arch != SUPPORTED_ARCH:
        found.append(f"unsupported CPU architecture {info.arch or 'unknown'}; gpu-llm supports {SUPPORTED_ARCH}")
    if info.uid != 0:
        how = "sudo works without a password: add --sudo" if info.sudo else "connect as root or give the user sudo"
        found.append(f"not running as root (uid {info.uid}); {how}")
    free_gib = info.free_kib / KIB_PER_GIB
    if free_gib < required_gib:
        found.append(f"{free_gib:.1f} GiB free on {info.mount or '?'} (holding {info.checked_path or '?'}), "
                     f"{required_gib:.1f} GiB needed ({disk_for})")
    if require_gpu and not info.pci_gpus:
        found.append("no NVIDIA GPU on the PCI bus (vendor 0x10de, display class); "
                     "set preflight_require_gpu: false to provision a GPU-less host")
    elif require_gpu and gpus_needed[0] > len(info.pci_gpus):
        found.append(f"{gpus_needed[1]} needs {gpus_needed[0]} GPU(s) but the host has {len(info.pci_gpus)} "
                     "on the PCI bus")
    return found


def summary(info: HostPreflight, required_gib: float) -> str:
    extra = f", {len(info.nvswitches)} NVSwitch(es)" if info.nvswitches else ""
    extra += ", Secure Boot on" if info.secure_boot else ""
    return (f"{info.os_id} {info.arch}, uid {info.uid}, {info.free_kib / KIB_PER_GIB:.1f} GiB free on {info.mount}"
            f" (>= {required_gib:.1f} GiB), {len(info.pci_gpus)} NVIDIA GPU(s) on PCI{extra}")


@operation()
def check(supported_os: list[str], required_gib: float, require_gpu: bool = True,
          gpus_needed: tuple[int, str] = (1, ""), disk_for: str = "model + preflight_image_gib"):
    """
    Refuse the host (failing this operation, changing nothing) unless it can run gpu-llm.

    Free space is checked on the filesystem of the model directory's nearest existing parent (the snapshot's probe).
    + supported_os: allowed ID-VERSION_ID values of /etc/os-release, e.g. ["ubuntu-24.04"]
    + required_gib: free GiB needed there (model + image)
    + require_gpu: refuse when no NVIDIA GPU is on the PCI bus
    + gpus_needed: (count, setting): refuse when the settings ask for more GPUs than the PCI bus shows
    + disk_for: what the free space is for (in the refusal)

    **Example:**

    .. code:: python

        preflight.check(name="Check the host can run gpu-llm", supported_os=["ubuntu-24.04"], required_gib=44)
    """
    info = snapshot.current(host).preflight
    found = problems(info, supported_os, required_gib, require_gpu, gpus_needed, disk_for)
    if found:
        yield refuse("preflight failed: " + "; ".join(found))
    else:
        host.noop("preflight passed: " + summary(info, required_gib))


@operation()
def dpkg_finished():
    """
    Finish a dpkg run that was cut off (a dropped SSH session or a reboot mid-install) with
    ``dpkg --configure -a``, keeping the host's own config files; apt refuses every install until then.

    **Example:**

    .. code:: python

        preflight.dpkg_finished(name="Finish an interrupted dpkg run")
    """
    if not snapshot.current(host).preflight.dpkg_interrupted:
        host.noop("no interrupted dpkg run to finish")
        return
    yield StringCommand("DEBIAN_FRONTEND=noninteractive", "dpkg", "--configure", "-a",
                        "--force-confdef", "--force-confold")
