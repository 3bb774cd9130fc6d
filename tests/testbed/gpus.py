"""GPU fixtures per host: gpus.json for the nvidia-smi stand-in and a fake PCI view (sysfs device dirs)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

NVIDIA = 0x10DE


def _gpus(name: str, count: int, memory_mib: int, cc: str, device: int, pci_class: int, buses: list[str],
          **extra: object) -> list[dict]:
    return [{"name": name, "memory_mib": memory_mib, "compute_cap": cc,
             "pci_bus_id": f"00000000:{bus}.0", "pci_device_id": f"0x{device:04x}", "pci_class": f"0x{pci_class:06x}",
             "uuid": f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{name}-{i}')}", **extra}
            for i, bus in zip(range(count), buses)]


# PCI device ids: pci.ids (10de:1e07 TU102 RTX 2080 Ti Rev. A, 10de:2330 GH100 H100 SXM5 80GB,
# 10de:20b0 GA100 A100 SXM4 40GB, 10de:2335 GH100 H200 SXM 141GB). The H200 entry is the real host in
# tests/fixtures/h200-host/ (query-gpu.csv, sysfs-pci.txt, topo.txt).
FIXTURES: dict[str, list[dict]] = {
    "none": [],
    "rtx2080ti-22g-x4": _gpus("NVIDIA GeForce RTX 2080 Ti", 4, 22528, "7.5", 0x1E07, 0x030000,
                              ["01:00", "02:00", "81:00", "82:00"], topo_link="SYS", power_w=250, pcie_gen=3),
    "h100-x1": _gpus("NVIDIA H100 80GB HBM3", 1, 81559, "9.0", 0x2330, 0x030200, ["18:00"],
                     power_w=700, pcie_gen=5, mig_capable=True),
    "a100-40g-x8": _gpus("NVIDIA A100-SXM4-40GB", 8, 40960, "8.0", 0x20B0, 0x030200,
                         ["07:00", "0f:00", "47:00", "4e:00", "87:00", "90:00", "b7:00", "bd:00"],
                         topo_link="NV12", power_w=400, mig_capable=True),
    # HGX H100 8-GPU baseboard (DGX H100's bus numbers): NVLink through 4 NVSwitches, NV18 between every GPU pair
    # (18 NVLink 4 links per H100 SXM5); its NVSwitches are in NVSWITCHES below.
    "hgx-h100-x8": _gpus("NVIDIA H100 80GB HBM3", 8, 81559, "9.0", 0x2330, 0x030200,
                         ["18:00", "2a:00", "3a:00", "5d:00", "9a:00", "ab:00", "ba:00", "db:00"],
                         topo_link="NV18", power_w=700, pcie_gen=5, mig_capable=True),
    "h200-x1": [{"name": "NVIDIA H200", "memory_mib": 143771, "compute_cap": "9.0", "pci_bus_id": "00000000:00:06.0",
                 "pci_device_id": "0x2335", "pci_class": "0x030200", "uuid": "GPU-eb3db77d-6b18-9154-a5eb-7b64223dc723",
                 "power_w": 700, "pcie_gen": 5, "mig_capable": True}],
}


# NVSwitches per fixture: NVIDIA PCI functions of class 0x068000 ("other bridge"); 10de:22a3 is "GH100 [H100
# NVSwitch]" in pci.ids (https://pci-ids.ucw.cz/read/PC/10de/22a3). The fabric manager stand-in configures them.
NVSWITCHES: dict[str, list[dict]] = {
    "hgx-h100-x8": [{"pci_bus_id": f"00000000:{bus}.0", "pci_device_id": "0x22a3", "pci_class": "0x068000"}
                    for bus in ("05:00", "06:00", "07:00", "08:00")],
}


def _config_space(device: int, pci_class: int) -> bytes:
    """256-byte type-0 PCI config header: ids, class, revision a1, NVIDIA subsystem."""
    cfg = bytearray(256)
    cfg[0:4] = NVIDIA.to_bytes(2, "little") + device.to_bytes(2, "little")
    cfg[8] = 0xA1
    cfg[9:12] = pci_class.to_bytes(3, "little")
    cfg[0x2C:0x30] = NVIDIA.to_bytes(2, "little") + (0x1000 + device % 0x100).to_bytes(2, "little")
    return bytes(cfg)


def write_pci_view(gpus: list[dict], dest: Path) -> None:
    """A stand-in for /sys/bus/pci/devices: links to the real devices plus one dir per fake GPU.

    install_pci_view() has the guest bind-mount it over /sys/bus/pci/devices at boot, so lspci and sysfs
    readers see NVIDIA GPUs before any driver exists.
    """
    dest.mkdir(parents=True, exist_ok=True)
    real = Path("/sys/bus/pci/devices")
    for dev in real.iterdir():
        (dest / dev.name).symlink_to(os.readlink(dev) if dev.is_symlink() else dev)
    for g in gpus:
        d = dest / g["pci_bus_id"][4:].lower()  # sysfs uses a 4-digit domain
        d.mkdir()
        device, pci_class = int(g["pci_device_id"], 16), int(g["pci_class"], 16)
        sub = 0x1000 + device % 0x100
        for name, value in {"vendor": f"0x{NVIDIA:04x}", "device": f"0x{device:04x}", "class": f"0x{pci_class:06x}",
                            "subsystem_vendor": f"0x{NVIDIA:04x}", "subsystem_device": f"0x{sub:04x}",
                            "revision": "0xa1", "irq": "0", "numa_node": "-1", "enable": "1",
                            "modalias": f"pci:v000010DEd0000{device:04X}sv000010DEsd0000{sub:04X}"
                                        f"bc{pci_class >> 16:02X}sc{(pci_class >> 8) & 0xFF:02X}i00"}.items():
            (d / name).write_text(value + "\n")
        (d / "resource").write_text("0x0000000000000000 0x0000000000000000 0x0000000000000000\n" * 17)
        (d / "config").write_bytes(_config_space(device, pci_class))


def write_gpus_json(gpus: list[dict], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(gpus, indent=2) + "\n")


PCI_VIEW = "usr/lib/gpu-llm-testbed/pci-devices"
# Mounted by the guest early at boot: nspawn (re)mounts /sys after its own --bind options when
# /proc/sys/net is made writable, so a bind from the outside would be hidden.
PCI_UNIT = f"""[Unit]
Description=gpu-llm testbed: fake PCI view with the fixture's NVIDIA GPUs over /sys/bus/pci/devices
DefaultDependencies=no
Before=sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/mount --bind -o ro /{PCI_VIEW} /sys/bus/pci/devices

[Install]
WantedBy=sysinit.target
"""


def install_pci_view(gpus: list[dict], root: Path) -> None:
    """Write the PCI view into a host root and enable the unit that mounts it at every boot."""
    write_pci_view(gpus, root / PCI_VIEW)
    unit = root / "etc/systemd/system/gpu-llm-testbed-pci.service"
    unit.write_text(PCI_UNIT)
    wants = root / "etc/systemd/system/sysinit.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")
