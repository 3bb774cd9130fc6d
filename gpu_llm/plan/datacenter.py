"""Datacenter GPU servers (pure decisions): NVSwitch fabric, Secure Boot and Ubuntu's signed -server driver.

Sources (facts carried over, cited where used):
  - NVIDIA Fabric Manager user guide, https://docs.nvidia.com/datacenter/tesla/fabric-manager-user-guide/index.html:
    NVSwitch systems (HGX/DGX A100/H100/H200) need the fabric manager service `nvidia-fabricmanager` at exactly the
    driver's version; until it has configured the fabric CUDA fails with error 802 "system not yet initialized"
    (cudaErrorSystemNotReady; e.g. github.com/pytorch/pytorch/issues/35710).
  - Ubuntu's archive (packages.ubuntu.com): fabric-manager-570 builds nvidia-fabricmanager-570 (multiverse);
    linux-restricted-modules builds linux-modules-nvidia-<branch>-server[-open]-<flavour> (restricted), the signed
    precompiled modules `ubuntu-drivers --gpgpu install nvidia:<branch>-server` installs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

DRIVER_SOURCES = ("nvidia", "ubuntu")
FABRIC_SERVICE = "nvidia-fabricmanager"
PERSISTENCED_SERVICE = "nvidia-persistenced"
# Where the fabric manager logs (LOG_FILE_NAME in its default fabricmanager.cfg, per the Fabric Manager user guide).
FABRIC_LOG = "/var/log/fabricmanager.log"


def interconnect(topology: str | None, nvswitches: int) -> str | None:
    """How the GPUs are linked: NVSwitch hosts are all-to-all NVLink whatever `nvidia-smi topo -m` printed (each GPU
    reaches every other through the switches: HGX H100 shows NV18 for every pair); else the topology's verdict."""
    return "nvlink" if nvswitches > 0 else topology


def fabric_packages(branch: str) -> tuple[str, ...]:
    """The fabric manager package of a driver branch, in NVIDIA's CUDA repository and in Ubuntu's archive alike
    (nvidia-fabricmanager-<branch>; Fabric Manager user guide, "Installing on Debian based systems").

    Not libnvidia-nscq-<branch>: NSCQ is the NVSwitch query library DCGM uses for switch telemetry, not something the
    fabric manager service needs to configure the fabric (not verified against a real HGX here: see the README)."""
    return (f"nvidia-fabricmanager-{branch}",)


class _Fabric(Protocol):
    index: int
    state: str
    status: str


@dataclass(frozen=True)
class FabricVerdict:
    """kind: "ready" (every GPU's fabric completed, or no fabric state to wait for with the service active),
    "waiting" (not yet completed), "failed" (completed with an error, or the service is not active)."""

    kind: str
    detail: str


def fabric_verdict(fabric: Sequence[_Fabric], service_active: str) -> FabricVerdict:
    """Is the NVSwitch fabric ready for CUDA (pure)? `service_active`: systemd's ActiveState of the fabric manager."""
    if service_active not in ("active", "activating", "reloading"):
        return FabricVerdict("failed", f"the {FABRIC_SERVICE} service is {service_active or 'not running'}")
    if not fabric or all(f.state in ("N/A", "[N/A]", "Not Supported") for f in fabric):
        # GPUs without a fabric state (A100-era): the running service is all nvidia-smi lets us check
        return FabricVerdict("ready", f"{FABRIC_SERVICE} is active (the GPUs report no fabric state)")
    errors = [f for f in fabric if f.state == "Completed" and f.status not in ("Success", "N/A")]
    if errors:
        return FabricVerdict("failed", "fabric completed with errors: " + ", ".join(
            f"GPU {f.index} {f.status}" for f in errors))
    pending = [f for f in fabric if f.state != "Completed"]
    if pending:
        return FabricVerdict("waiting", "fabric not completed: " + ", ".join(
            f"GPU {f.index} {f.state}" for f in pending))
    return FabricVerdict("ready", f"fabric completed on all {len(fabric)} GPUs ({FABRIC_SERVICE} active)")


# ---- Secure Boot ---------------------------------------------------------------------------------------------------

def secure_boot_refusal(secure_boot: bool | None, source: str, decision_kind: str) -> str | None:
    """Why the driver step would leave a Secure Boot host without a driver, or None (pure).

    NVIDIA's repository builds the modules with DKMS on the host; they are not signed by a key the firmware trusts,
    so with Secure Boot on the kernel refuses to load them ("Key was rejected by service") and the host reboots into
    no driver. Only an install or replacement is refused: a driver that already runs was loaded, so it is kept."""
    if not secure_boot or source != "nvidia" or decision_kind not in ("install", "replace"):
        return None
    return ("Secure Boot is enabled: NVIDIA's repository driver (nvidia_driver_source: nvidia) builds unsigned DKMS "
            "modules that the kernel will not load, so the host would reboot without a driver; set "
            "nvidia_driver_source: ubuntu (Canonical's signed precompiled modules) or turn Secure Boot off "
            f"(nvidia_driver_source allows {', '.join(DRIVER_SOURCES)})")


# ---- Ubuntu's signed -server driver ----------------------------------------------------------------------------

def kernel_flavour(kernel: str) -> str:
    """The flavour of an Ubuntu kernel release ("6.8.0-60-generic" -> "generic", "6.8.0-1030-aws" -> "aws"): what
    follows the upstream version and the ABI number; a kernel without an ABI number keeps what follows the version."""
    m = re.fullmatch(r"\d+\.\d+(?:\.\d+)?-(?:\d+-)?(.+)", kernel.strip())
    if not m:
        raise ValueError(f"kernel release {kernel!r} has no flavour (expected e.g. 6.8.0-60-generic)")
    return m.group(1)


@dataclass(frozen=True)
class UbuntuDriver:
    """Packages of Ubuntu's -server driver without DKMS: the headless driver metapackage (pinned to the exact
    version), nvidia-smi's package at the same version, the signed modules for the running kernel, and the flavour's
    modules metapackage (it pulls the modules of each new kernel)."""

    driver: str
    utils: str
    modules_kernel: str
    modules_flavour: str

    @property
    def packages(self) -> tuple[str, ...]:
        return (self.driver, self.utils, self.modules_flavour, self.modules_kernel)


def ubuntu_driver(branch: str, open_modules: bool, kernel: str) -> UbuntuDriver:
    """Package names as `ubuntu-drivers --gpgpu install nvidia:<branch>-server` selects them: the headless metapackage
    WITHOUT DKMS, nvidia-headless-no-dkms-570-server[-open] (ubuntu-drivers-common's _get_headless_no_dkms_metapackage,
    https://github.com/canonical/ubuntu-drivers-common/blob/master/UbuntuDrivers/detect.py), plus
    linux-modules-nvidia-570-server[-open]-<flavour> (+ -<kernel release>) from restricted. Not
    nvidia-driver-570-server[-open]: it depends on nvidia-dkms-570-server[-open] (an unsigned module build) and the
    X/GL libraries; and the headless metapackage does not pull nvidia-smi, which is nvidia-utils-570-server
    (https://github.com/canonical/nvidia-graphics-drivers/blob/570-server-noble/debian/templates/control.in, before
    the 580 transitionals: commit 4e3d1c29)."""
    suffix = "-server" + ("-open" if open_modules else "")
    modules = f"linux-modules-nvidia-{branch}{suffix}"
    return UbuntuDriver(driver=f"nvidia-headless-no-dkms-{branch}{suffix}", utils=f"nvidia-utils-{branch}-server",
                        modules_kernel=f"{modules}-{kernel}", modules_flavour=f"{modules}-{kernel_flavour(kernel)}")


@dataclass(frozen=True)
class Stanza:
    """One package version in apt's lists (`apt-cache show` stanza): name, version and its Depends line."""

    package: str
    version: str
    depends: str = ""


def parse_stanzas(lines: Iterable[str]) -> list[Stanza]:
    """`apt-cache show PKG...` output -> stanzas (continuation lines of Depends joined)."""
    out: list[Stanza] = []
    fields: dict[str, str] = {}
    last = ""
    for line in [*lines, ""]:
        if not line.strip():
            if fields.get("Package") and fields.get("Version"):
                out.append(Stanza(fields["Package"], fields["Version"], fields.get("Depends", "")))
            fields, last = {}, ""
        elif line[:1] in (" ", "\t") and last:
            fields[last] += " " + line.strip()
        else:
            key, sep, value = line.partition(":")
            if sep:
                last = key.strip()
                fields[last] = value.strip()
    return out


def _other_branch(depends: str, branch: str) -> str | None:
    """A dependency on another driver branch's package ("libnvidia-extra-580"), or None. Of alternatives ("a | b")
    only the first counts: apt installs it when it can."""
    for dep in depends.split(","):
        name = dep.split("|", 1)[0].strip().split(" ", 1)[0].split(":", 1)[0]
        m = re.search(r"nvidia[a-z0-9-]*?-(\d{3})(-server)?(-open)?$", name)
        if m and m.group(1) != branch:
            return name
    return None


def choose_version(stanzas: Sequence[Stanza], package: str, version: str, branch: str,
                   where: str) -> tuple[str | None, str]:
    """The apt version of `package` that IS driver release `version` (pure): (package version, "") or (None, why).

    `where` names the source for messages ("Ubuntu's archive"). Ubuntu turned several 570 packages into transitional
    ones that pull 580 (packages.ubuntu.com: e.g. libnvidia-extra-570 570.172.08-0ubuntu3 depends on
    libnvidia-extra-580, nvidia-fabricmanager-dev-570 570.211.01-0ubuntu1.24.04.1 on nvidia-fabricmanager-dev-580):
    a version whose dependencies name another branch is not the 570 driver; it is refused with what it would install."""
    mine = [s for s in stanzas if s.package == package]
    if not mine:
        return None, f"{package} is not in this host's apt lists ({where})"
    exact = [s for s in mine if s.version.split(":")[-1].startswith(version + "-")]
    offered = ", ".join(sorted({s.version for s in mine}))
    if not exact:
        return None, (f"{where} has no {package} at driver {version} (it offers {offered}); it must match the driver "
                      "exactly: set nvidia_driver_version to one of those")
    for s in exact:
        if _other_branch(s.depends, branch) is None:
            return s.version, ""
    pulled = _other_branch(exact[0].depends, branch)
    return None, (f"{where}'s {package} {exact[0].version} is a transitional package that installs {pulled}, not "
                  f"driver {version}: this source cannot hold branch {branch} exactly; set nvidia_driver_source: "
                  "nvidia (with Secure Boot off) or an nvidia_driver_branch/nvidia_driver_version it still ships")


def choose_modules(stanzas: Sequence[Stanza], package: str, version: str) -> tuple[str | None, str]:
    """The version of Canonical's signed modules package for the running kernel that was built for driver `version`
    (pure). Each build depends on nvidia-kernel-common-<branch>-server (>= the driver it was built from), as
    packages.ubuntu.com shows for linux-modules-nvidia-595-server-open-generic-7.0 (>= 595.71.05); a module of another
    release than the user-space driver fails with a version mismatch, so one built from `version` is required."""
    mine = [s for s in stanzas if s.package == package]
    if not mine:
        return None, f"{package} is not in apt"
    built: list[str] = []
    for s in mine:
        m = re.search(r"nvidia-kernel-common-\d+(?:-server)? \((?:>=|=) ([^)\s]+)\)", s.depends)
        if m:
            built.append(m.group(1))
            if m.group(1).split(":")[-1].split("-")[0] == version:  # "570.172.08-0ubuntu0.24.04.1" or "570.172.08"
                return s.version, ""
    return None, (f"Canonical's signed modules for this kernel ({package}) are built for driver "
                  f"{', '.join(sorted(set(built))) or 'unknown'}, not {version}: set nvidia_driver_version to that "
                  "release, or nvidia_driver_source: nvidia with Secure Boot off")


def installed_modules(packages: Mapping[str, object], modules_kernel: str) -> bool:
    """Are the signed modules for the running kernel installed (name in dpkg's installed packages)?"""
    return modules_kernel in packages
