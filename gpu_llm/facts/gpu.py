"""NVIDIA GPUs of a host: from nvidia-smi when a driver runs, else from the PCI bus (works before any driver)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from pyinfra.api import FactBase

from gpu_llm.facts import JsonFact, marker, sections
from gpu_llm.plan.datacenter import interconnect
from gpu_llm.plan.gpus import parse_query_csv
from gpu_llm.plan.types import GPU

NVIDIA_VENDOR = "0x10de"
GPU_FIELDS = "index,name,uuid,memory.total,compute_cap,driver_version,pci.bus_id"
# + each GPU's persistence mode ("Enabled" / "Disabled"; nvidia-smi --help-query-gpu), read in the same call
QUERY_FIELDS = GPU_FIELDS + ",persistence_mode"

# NVIDIA GPUs and NVSwitches on the PCI bus: "<sysfs path> <device id> <class>" (vendor 0x10de; class 0x03xxxx =
# display controller: a GPU; class 0x0680 = "other bridge": an NVSwitch, e.g. 10de:22a3 "GH100 [H100 NVSwitch]" in
# pci.ids, https://pci-ids.ucw.cz/read/PC/10de/22a3; the GPUs' HDMI audio functions are class 0x0403 and left out).
# lspci is often missing (it was on the reference H200 host), sysfs never is. The loop leaves $nvsw set when it saw
# an NVSwitch (the GPU part asks nvidia-smi for the fabric state only then).
# `read` is a shell builtin: no process per device (a server has hundreds of PCI functions).
NVSWITCH_CLASS = "0x0680"
PCI_COMMAND = (
    "nvsw=; for d in /sys/bus/pci/devices/*; do "
    'read -r v 2>/dev/null < "$d/vendor" && [ "$v" = ' + NVIDIA_VENDOR + ' ] || continue; '
    'read -r c < "$d/class"; case "$c" in 0x03*|' + NVSWITCH_CLASS + '*) read -r id < "$d/device"; '
    'echo "$d $id $c"; case "$c" in ' + NVSWITCH_CLASS + '*) nvsw=1;; esac;; esac; '
    "done"
)
# The host snapshot scans the bus once for its preflight and GPU parts: into $pci (and $nvsw) before either runs.
PCI_TO_VAR = f'pci=$({PCI_COMMAND}); nvsw=; case "$pci" in *" {NVSWITCH_CLASS}"*) nvsw=1;; esac'
NEWLINE = "\n"  # a literal newline inside a shell pattern (sh has no $'\n')
PCI_FROM_VAR = '[ -n "$pci" ] && printf "%s\\n" "$pci"'
# Fabric state per GPU (fields of `nvidia-smi --query-gpu`, as NVIDIA's driver container reads them:
# github.com/NVIDIA/gpu-driver-container pull 909): "Not Started" -> "In Progress" -> "Completed" while the fabric
# manager configures the NVSwitch fabric; "N/A" where the GPU has no fabric state (A100-era HGX report N/A with a
# running fabric manager: github.com/bottlerocket-os/bottlerocket pull 3873).
FABRIC_QUERY = "index,fabric.state,fabric.status"

# nvidia-smi exit statuses (nvidia-smi(1) RETURN VALUE): 9 = driver not loaded; 18 = the user-space library and
# the loaded kernel module differ (after a driver upgrade without reboot). The messages are checked as well
# because older releases exit 9 for both.
SMI_NO_DRIVER_RC = 9
SMI_MISMATCH_RC = 18

SmiState = str  # "ok" | "missing" | "no-driver" | "mismatch" | "error"


@dataclass(frozen=True)
class PciGpu(JsonFact):
    """An NVIDIA display controller seen on the PCI bus."""

    address: str  # "0000:00:06.0"
    device_id: str  # "0x2335"


@dataclass(frozen=True)
class FabricState(JsonFact):
    """One GPU's NVSwitch fabric registration as nvidia-smi reports it."""

    index: int
    state: str  # "Not Started" | "In Progress" | "Completed" | "N/A" ...
    status: str  # "Success" once completed, else an error name or "N/A"


@dataclass
class GpuInventory(JsonFact):
    """What the host has: `gpus` from nvidia-smi when `smi` is "ok", else from PCI ids (no names, memory 0);
    `nvswitches` from the PCI bus; `fabric` per GPU (read only on NVSwitch hosts with a working nvidia-smi)."""

    smi: SmiState
    gpus: list[GPU] = field(default_factory=list)
    pci: list[PciGpu] = field(default_factory=list)
    message: str = ""  # nvidia-smi's own words when it failed
    nvswitches: list[PciGpu] = field(default_factory=list)
    fabric: list[FabricState] = field(default_factory=list)
    persistence: list[str] = field(default_factory=list)  # per GPU, in index order: "Enabled" | "Disabled"


def parse_persistence(lines: list[str]) -> list[str]:
    """The last field (persistence_mode) of each --query-gpu=QUERY_FIELDS line with all of them."""
    n = len(QUERY_FIELDS.split(","))
    return [cells[-1] for cells in ([c.strip() for c in line.split(",")] for line in lines) if len(cells) == n]


def parse_pci(lines: list[str]) -> list[PciGpu]:
    """Parse PCI_COMMAND output (also the reference host's sysfs-pci.txt)."""
    found = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[2].startswith("0x03"):
            found.append(PciGpu(address=parts[0].rstrip("/").rsplit("/", 1)[-1], device_id=parts[1]))
    return sorted(found, key=lambda p: p.address)


def parse_nvswitches(lines: list[str]) -> list[PciGpu]:
    """The NVSwitches (class 0x0680) among PCI_COMMAND's lines."""
    found = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[2].startswith(NVSWITCH_CLASS):
            found.append(PciGpu(address=parts[0].rstrip("/").rsplit("/", 1)[-1], device_id=parts[1]))
    return sorted(found, key=lambda p: p.address)


def parse_fabric(lines: list[str]) -> list[FabricState]:
    """`nvidia-smi --query-gpu=index,fabric.state,fabric.status --format=csv,noheader` lines."""
    out = []
    for line in lines:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == 3 and cells[0].isdigit():
            out.append(FabricState(int(cells[0]), cells[1], cells[2]))
    return out


def smi_state(rc: int | None, output: list[str]) -> SmiState:
    """Classify an nvidia-smi run by exit status and message; rc None = nvidia-smi not installed."""
    text = " ".join(output)
    if rc is None:
        return "missing"
    if rc == SMI_MISMATCH_RC or "version mismatch" in text:
        return "mismatch"
    if rc == SMI_NO_DRIVER_RC or "couldn't communicate with the NVIDIA driver" in text:
        return "no-driver"
    return "ok" if rc == 0 else "error"


def parse_query_gpu(lines: list[str], interconnect: str | None = None) -> list[GPU]:
    """Parse `nvidia-smi --query-gpu=QUERY_FIELDS --format=csv,noheader,nounits` (malformed lines skipped)."""
    gpus = parse_query_csv("\n".join(lines), tuple(GPU_FIELDS.split(",")), strict=False)
    return [replace(g, interconnect=interconnect) for g in gpus]


def parse_topology(lines: list[str]) -> str | None:
    """`nvidia-smi topo -m` -> "nvlink" if any GPU pair is linked by NV# links, "pcie" otherwise, None if empty."""
    rows = [re.sub(r"\x1b\[[0-9;]*m", "", line).split() for line in lines]
    gpu_rows = [r for r in rows if r and re.fullmatch(r"GPU\d+", r[0])]
    if not gpu_rows:
        return None
    for row in gpu_rows:
        if any(re.fullmatch(r"NV\d+", cell) for cell in row[1:]):
            return "nvlink"
    return "pcie"


def gpus_from_pci(pci: list[PciGpu]) -> list[GPU]:
    """GPUs before a driver exists: PCI order, unknown name/memory/compute capability."""
    return [GPU(index=i, name=f"NVIDIA {p.device_id}", memory_mib=0, compute_capability=(0, 0),
                pci_bus_id=p.address) for i, p in enumerate(pci)]


def parse_inventory(lines: list[str]) -> GpuInventory:
    """Parse NvidiaGpus output (sections pci, smi, rc, topo)."""
    s = sections(lines)
    pci = parse_pci(s.get("pci", []))
    nvswitches = parse_nvswitches(s.get("pci", []))
    rc_text = (s.get("rc") or ["missing"])[0].strip()
    rc = int(rc_text) if rc_text.lstrip("-").isdigit() else None
    state = smi_state(rc, s.get("smi", []))
    if state != "ok":
        return GpuInventory(smi=state, gpus=gpus_from_pci(pci), pci=pci, message="\n".join(s.get("smi", [])).strip(),
                            nvswitches=nvswitches)
    gpus = parse_query_gpu(s.get("smi", []), interconnect(parse_topology(s.get("topo", [])), len(nvswitches)))
    return GpuInventory(smi=state, gpus=gpus, pci=pci, nvswitches=nvswitches, fabric=parse_fabric(s.get("fabric", [])),
                        persistence=parse_persistence(s.get("smi", [])))


class NvidiaGpus(FactBase[GpuInventory]):
    """
    NVIDIA GPUs: nvidia-smi's view when a driver runs, the PCI bus otherwise; one round trip.

    .. code:: python

        GpuInventory(smi="ok", gpus=[GPU(index=0, name="NVIDIA H200", memory_mib=143771, ...)], pci=[...])
    """

    @staticmethod
    def default() -> GpuInventory:
        return GpuInventory(smi="missing")

    def command(self, pci_var: bool = False) -> str:
        """`pci_var`: the bus was scanned into $pci and $nvsw already (PCI_TO_VAR; the host snapshot)."""
        return "; ".join([
            marker("pci"), PCI_FROM_VAR if pci_var else PCI_COMMAND,
            marker("smi"),
            "if command -v nvidia-smi >/dev/null 2>&1; then "
            f"out=$(nvidia-smi --query-gpu={QUERY_FIELDS} --format=csv,noheader,nounits 2>&1); rc=$?; "
            'printf "%s\\n" "$out"; else rc=missing; fi',
            marker("rc"), 'echo "$rc"',
            # the links between GPUs: nothing to ask with one GPU (nvidia-smi is the slow part of a host read);
            # more than one line of answer is more than one GPU (a shell pattern, not a `wc` process)
            f'if [ "$rc" = 0 ]; then case "$out" in *"{NEWLINE}"*) {marker("topo")}; '
            "nvidia-smi topo -m 2>/dev/null;; esac; fi",
            # the fabric state only where NVSwitches are on the bus ($nvsw from PCI_COMMAND)
            f'if [ "$rc" = 0 ] && [ -n "$nvsw" ]; then {marker("fabric")}; '
            f"nvidia-smi --query-gpu={FABRIC_QUERY} --format=csv,noheader 2>/dev/null; fi",
            "true",
        ])

    def process(self, output: list[str]) -> GpuInventory:
        return parse_inventory(output)
