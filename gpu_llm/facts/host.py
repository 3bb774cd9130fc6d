"""What preflight checks about a host, gathered in one command: OS, CPU arch, privileges, free disk, GPUs on PCI."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from gpu_llm.facts import JsonFact, marker, sections
from gpu_llm.facts.gpu import PCI_COMMAND, PCI_FROM_VAR, PciGpu, parse_nvswitches, parse_pci

# Secure Boot: `mokutil --sb-state` ("SecureBoot enabled" / "SecureBoot disabled"), else the EFI global variable
# SecureBoot (GUID 8be4df61-93ca-11d2-aa0d-00e098032b8c, UEFI spec) whose efivarfs file is 4 attribute bytes and
# one value byte (https://docs.kernel.org/filesystems/efivarfs.html): 1 = on.
SB_EFIVAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
SECURE_BOOT_COMMAND = (
    "if command -v mokutil >/dev/null 2>&1; then mokutil --sb-state 2>&1; fi; "
    f'if [ -r {SB_EFIVAR} ]; then echo "efivar $(od -An -t u1 -j4 -N1 {SB_EFIVAR})"; fi'
)


@dataclass
class HostPreflight(JsonFact):
    """`os_id` is ID-VERSION_ID from /etc/os-release ("ubuntu-24.04"); `free_kib`/`mount` describe the
    filesystem holding `path` (its nearest existing parent)."""

    os_id: str = ""
    os_name: str = ""
    codename: str = ""
    arch: str = ""
    uid: int = -1
    sudo: bool = False
    checked_path: str = ""
    mount: str = ""
    free_kib: int = 0
    pci_gpus: list[PciGpu] = field(default_factory=list)
    # dpkg's update journal is not empty: a dpkg run was cut off (apt refuses to install until it is finished)
    dpkg_interrupted: bool = False
    # /etc/os-release's ID, VERSION_ID, VERSION_CODENAME and NAME (repository paths are chosen from them)
    release: dict[str, str] = field(default_factory=dict)
    nvswitches: list[PciGpu] = field(default_factory=list)  # NVIDIA NVSwitches on the PCI bus (class 0x0680)
    secure_boot: bool | None = None  # None: neither mokutil nor the EFI variable says (legacy BIOS boot)


def parse_os_release(lines: list[str]) -> dict[str, str]:
    """KEY=value lines of /etc/os-release, quotes removed."""
    out = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip('"').strip("'")
    return out


def parse_secure_boot(lines: list[str]) -> bool | None:
    """SECURE_BOOT_COMMAND output -> True / False, None when nothing says (mokutil's words win over the variable)."""
    text = "\n".join(lines)
    if "SecureBoot enabled" in text:
        return True
    if "SecureBoot disabled" in text:
        return False
    for line in lines:
        bits = line.split()
        if len(bits) == 2 and bits[0] == "efivar" and bits[1] in ("0", "1"):
            return bits[1] == "1"
    return None


def parse_preflight(lines: list[str]) -> HostPreflight:
    s = sections(lines)
    osr = parse_os_release(s.get("os", []))
    df = (s.get("df") or [""])[-1].split()
    uid = (s.get("uid") or [""])[0].strip()
    return HostPreflight(
        os_id=f"{osr.get('ID', '')}-{osr.get('VERSION_ID', '')}".strip("-"),
        os_name=osr.get("PRETTY_NAME", ""),
        codename=osr.get("VERSION_CODENAME", ""),
        arch=(s.get("arch") or [""])[0].strip(),
        uid=int(uid) if uid.isdigit() else -1,
        sudo=(s.get("sudo") or [""])[0].strip() == "yes",
        checked_path=(s.get("path") or [""])[0].strip(),
        # df -Pk: Filesystem 1024-blocks Used Available Capacity Mounted-on
        free_kib=int(df[3]) if len(df) >= 6 and df[3].isdigit() else 0,
        mount=df[5] if len(df) >= 6 else "",
        pci_gpus=parse_pci(s.get("pci", [])),
        dpkg_interrupted=any(line.strip().isdigit() for line in s.get("dpkg", [])),
        release={k: osr[k] for k in ("ID", "VERSION_ID", "VERSION_CODENAME", "NAME") if k in osr},
        nvswitches=parse_nvswitches(s.get("pci", [])),
        secure_boot=parse_secure_boot(s.get("secureboot", [])),
    )


class Preflight(FactBase[HostPreflight]):
    """
    OS, arch, uid, passwordless sudo, free space at `path`'s nearest existing parent, NVIDIA GPUs on PCI.

    .. code:: python

        HostPreflight(os_id="ubuntu-24.04", arch="x86_64", uid=0, free_kib=67108864, mount="/", pci_gpus=[...])
    """

    @staticmethod
    def default() -> HostPreflight:
        return HostPreflight()

    def command(self, path: str, pci_var: bool = False) -> str:
        """`pci_var`: the bus was scanned into $pci already (gpu_llm.facts.gpu.PCI_TO_VAR; the host snapshot)."""
        return "; ".join([
            marker("os"), "cat /etc/os-release 2>/dev/null",
            marker("arch"), "uname -m",
            marker("uid"), "u=$(id -u)", 'echo "$u"',
            marker("sudo"), '[ "$u" = 0 ] || { sudo -n true 2>/dev/null && echo yes; }',
            f"p={shlex.quote(path)}", 'while [ ! -e "$p" ]; do p=$(dirname "$p"); done',
            marker("path"), 'echo "$p"',
            marker("df"), 'df -Pk "$p"',  # its last line is the filesystem's (parse_preflight)
            marker("pci"), PCI_FROM_VAR if pci_var else PCI_COMMAND,
            # apt's "dpkg was interrupted" test: a numbered file in dpkg's update journal (a glob: no `ls` process)
            marker("dpkg"), 'for f in /var/lib/dpkg/updates/*; do [ -e "$f" ] && echo "${f##*/}"; done',
            marker("secureboot"), SECURE_BOOT_COMMAND,
            "true",
        ])

    def process(self, output: list[str]) -> HostPreflight:
        return parse_preflight(output)
