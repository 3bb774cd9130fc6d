"""NVIDIA driver state of a host in one command: apt packages, loaded kernel module, nvidia-smi, reboot flag."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from gpu_llm.facts import JsonFact, marker, sections
from gpu_llm.facts.gpu import SmiState, smi_state
from gpu_llm.plan.datacenter import parse_stanzas

# Driver metapackages: "nvidia-driver-570[-server][-open]" (Ubuntu, NVIDIA's repo), "nvidia-driver" (Debian),
# "nvidia-open" / "cuda-drivers[-570]" (NVIDIA's flavour-neutral ones), "nvidia-headless-no-dkms-570[-server][-open]"
# (what `ubuntu-drivers --gpgpu` installs: gpu_llm/plan/datacenter.py ubuntu_driver).
DRIVER_PACKAGE_RE = re.compile(r"^(nvidia-driver(-\d+(-server)?(-open)?)?|nvidia-open|cuda-drivers(-\d+)?"
                               r"|nvidia-headless-no-dkms-\d+(-server)?(-open)?)$")
# Every package a driver release brings (same version as the metapackage); what we hold and pin.
DRIVER_PATTERNS = ("nvidia*", "libnvidia*", "xserver-xorg-video-nvidia*", "libxnvctrl*", "cuda-drivers*")
# $f := the running kernel's flavour as gpu_llm.plan.datacenter.kernel_flavour reads it ("6.8.0-60-generic" ->
# "generic": what follows the version and the ABI number), with the shell's own pattern removal (no sed process).
KERNEL_FLAVOUR = 'k=$(uname -r); f=${k#*-}; case "$f" in [0-9]*-*) f=${f#*-};; esac'
# its metapackages (dpkg-query patterns on $f): linux[-image|-headers]-<flavour>[-hwe-*]
KERNEL_META = ("linux-{f}", "linux-image-{f}", "linux-headers-{f}", "linux-{f}-hwe-*", "linux-image-{f}-hwe-*",
               "linux-headers-{f}-hwe-*")
KERNEL_META_ARGS = " ".join('"' + p.format(f="$f") + '"' for p in KERNEL_META)


@dataclass(frozen=True)
class Package(JsonFact):
    name: str
    version: str
    held: bool


@dataclass
class DriverState(JsonFact):
    """
    packages: installed packages matching DRIVER_PATTERNS; module_version: loaded kernel module (None: none);
    smi: nvidia-smi state; smi_driver / smi_cuda: "Driver Version" / "CUDA Version" from its header;
    headers: "installed" | "available" | "missing" for linux-headers-<running kernel>; "unknown": not installed,
    and apt's lists not asked (the host snapshot leaves that to the install that needs it: `apt-cache show` costs
    more than the rest of the driver's state).
    """

    packages: dict[str, Package] = field(default_factory=dict)
    module_version: str | None = None
    smi: SmiState = "missing"
    smi_driver: str | None = None
    smi_cuda: str | None = None
    smi_message: str = ""
    kernel: str = ""
    headers: str = "missing"
    reboot_required: bool = False
    nouveau_loaded: bool = False
    # the running kernel flavour's metapackages (linux[-image|-headers]-<flavour>[-hwe-*]) that are installed
    kernel_meta: dict[str, Package] = field(default_factory=dict)

    @property
    def drivers(self) -> dict[str, Package]:
        """Installed driver metapackages."""
        return {n: p for n, p in self.packages.items() if DRIVER_PACKAGE_RE.match(n)}

    @property
    def running_version(self) -> str | None:
        """Driver version running now: the loaded module's, else what nvidia-smi reports."""
        return self.module_version or self.smi_driver


def parse_packages(lines: list[str]) -> dict[str, Package]:
    """`dpkg-query -W -f='${db:Status-Abbrev}|${Package}|${Version}\\n'` lines; keeps installed ones (?i)."""
    out = {}
    for line in lines:
        parts = line.split("|")
        if len(parts) == 3 and len(parts[0]) >= 2 and parts[0][1] == "i":
            out[parts[1]] = Package(name=parts[1], version=parts[2].strip(), held=parts[0][0] == "h")
    return out


def parse_smi_header(lines: list[str]) -> tuple[str | None, str | None]:
    """("570.153.02", "12.8") from nvidia-smi's table header or `nvidia-smi -q`."""
    text = " ".join(lines)
    driver = re.search(r"Driver Version\s*:?\s*([0-9.]+)", text)
    cuda = re.search(r"CUDA Version\s*:?\s*([0-9.]+)", text)
    return (driver.group(1) if driver else None, cuda.group(1) if cuda else None)


def parse_module_version(lines: list[str]) -> str | None:
    """/sys/module/nvidia/version ("570.153.02") or /proc/driver/nvidia/version ("NVRM version: ... 570.153.02 ...")."""
    for line in lines:
        m = re.search(r"\b(\d{3,}\.\d+(\.\d+)?)\b", line)
        if m:
            return m.group(1)
    return None


def driver_cuda(driver_version: str | None) -> str | None:
    """The "CUDA Version" nvidia-smi's header shows for a driver: the newest CUDA it runs, per NVIDIA's table
    (gpu_llm.plan.versions.CUDA_MIN_DRIVER); None when unknown or older than CUDA 12."""
    from gpu_llm.plan.versions import cuda_for_driver

    try:
        major, minor = cuda_for_driver(driver_version) if driver_version else (None, None)
    except ValueError:
        return None
    return f"{major}.{minor}" if major is not None else None


def parse_driver_state(lines: list[str], smi: tuple[str, str | None, str] | None = None) -> DriverState:
    """The driver part's sections; `smi` = (state, driver version, message) when nvidia-smi was read elsewhere (the
    host snapshot asks it once, in the GPU part's --query-gpu, which reports the same exit status and messages)."""
    s = sections(lines)
    if smi is not None:
        state, driver, message = smi
        cuda = driver_cuda(driver) if state == "ok" else None
        smi_out = [message] if message else []
    else:
        rc_text = (s.get("rc") or ["missing"])[0].strip()
        rc = int(rc_text) if rc_text.lstrip("-").isdigit() else None
        smi_out = s.get("smi", [])
        state = smi_state(rc, smi_out)
        driver, cuda = parse_smi_header(smi_out) if state == "ok" else (None, None)
    return DriverState(
        packages=parse_packages(s.get("dpkg", [])),
        module_version=parse_module_version(s.get("module", [])),
        smi=state,
        smi_driver=driver,
        smi_cuda=cuda,
        smi_message="" if state == "ok" else "\n".join(smi_out).strip(),
        kernel=(s.get("kernel") or [""])[0].strip(),
        headers=(s.get("headers") or ["missing"])[0].strip(),
        reboot_required=bool(s.get("reboot")),
        nouveau_loaded=bool(s.get("nouveau")),
        kernel_meta=parse_packages(s.get("kernelmeta", [])),
    )


class NvidiaDriver(FactBase[DriverState]):
    """
    Driver packages (dpkg), loaded module version, nvidia-smi header/status, kernel headers, reboot flag.

    .. code:: python

        DriverState(packages={"nvidia-driver-570-open": Package(..., "570.153.02-0ubuntu1", held=True)},
                    module_version="570.153.02", smi="ok", smi_driver="570.153.02", smi_cuda="12.8", ...)
    """

    @staticmethod
    def default() -> DriverState:
        return DriverState()

    def command(self, smi: bool = True, dpkg: bool = True) -> str:
        """`smi=False`: without nvidia-smi (the host snapshot reads it once, in its GPU part); `dpkg=False`: without
        dpkg's packages, kernel headers and kernel metapackages (the host snapshot asks dpkg once, in its packages
        part: gpu_llm.facts.snapshot.driver_dpkg_sections)."""
        patterns = " ".join(f"'{p}'" for p in DRIVER_PATTERNS)
        return "; ".join([
            *([marker("dpkg"),
               f"dpkg-query -W -f='${{db:Status-Abbrev}}|${{Package}}|${{Version}}\\n' {patterns} 2>/dev/null"]
              if dpkg else []),
            marker("module"),
            "cat /sys/module/nvidia/version 2>/dev/null || head -n 1 /proc/driver/nvidia/version 2>/dev/null",
            *([marker("smi"),
               'if command -v nvidia-smi >/dev/null 2>&1; then out=$(nvidia-smi 2>&1); rc=$?; '
               'printf "%s\\n" "$out" | head -n 4; else rc=missing; fi',
               marker("rc"), 'echo "$rc"'] if smi else []),
            marker("kernel"), "uname -r",
            *([marker("headers"),
               'k=linux-headers-$(uname -r); if dpkg-query -W -f=\'${db:Status-Abbrev}\' "$k" 2>/dev/null '
               '| grep -q "^.i"; then echo installed; elif apt-cache show "$k" >/dev/null 2>&1; then echo available; '
               'else echo missing; fi']
              if dpkg else []),
            marker("reboot"), "[ -e /var/run/reboot-required ] && echo required",
            marker("nouveau"), "grep -q '^nouveau ' /proc/modules 2>/dev/null && echo loaded",
            *([marker("kernelmeta"), f"{KERNEL_FLAVOUR}; dpkg-query -W -f='${{db:Status-Abbrev}}|${{Package}}|"
               f"${{Version}}\\n' {KERNEL_META_ARGS} 2>/dev/null"] if dpkg else []),
            "true",
        ])

    def process(self, output: list[str]) -> DriverState:
        return parse_driver_state(output)


class AptShow(FactBase[list]):
    """
    Every version apt's lists offer of some packages (`apt-cache show`): read only while installing a driver from
    Ubuntu's archive or a fabric manager, to pick the package version that is the pinned driver release.

    .. code:: python

        [Stanza(package="nvidia-driver-570-server-open", version="570.172.08-0ubuntu0.24.04.1", depends="..."), ...]
    """

    @staticmethod
    def default() -> list:
        return []

    def command(self, packages: tuple[str, ...]) -> str:
        names = " ".join(shlex.quote(p) for p in packages)
        return f"apt-cache show {names} 2>/dev/null; true"

    def process(self, output: list[str]) -> list:
        return parse_stanzas(output)
