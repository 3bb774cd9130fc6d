"""The sysfs PCI scan of the GPU and preflight facts, run by a real sh against a fake /sys/bus/pci/devices."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gpu_llm.facts.gpu import PCI_COMMAND, parse_pci


def _device(root: Path, slot: str, vendor: str, device: str, klass: str) -> None:
    d = root / slot
    d.mkdir(parents=True)
    for name, value in (("vendor", vendor), ("device", device), ("class", klass)):
        (d / name).write_text(value + "\n")


def test_scan_lists_nvidia_display_functions_only(tmp_path: Path) -> None:
    _device(tmp_path, "0000:00:06.0", "0x10de", "0x2335", "0x030200")  # H200, 3D controller
    _device(tmp_path, "0000:00:07.0", "0x10de", "0x1e07", "0x030000")  # 2080 Ti, VGA
    _device(tmp_path, "0000:00:07.1", "0x10de", "0x10f7", "0x040300")  # its HDMI audio: not a GPU
    _device(tmp_path, "0000:00:01.0", "0x8086", "0x7000", "0x060100")  # Intel bridge
    (tmp_path / "0000:00:02.0").mkdir()  # a function without a vendor file: skipped, no error
    out = subprocess.run(["sh", "-c", PCI_COMMAND.replace("/sys/bus/pci/devices", str(tmp_path))],
                         capture_output=True, text=True, check=True)
    assert out.stderr == ""
    assert out.stdout.splitlines() == [f"{tmp_path}/0000:00:06.0 0x2335 0x030200",
                                       f"{tmp_path}/0000:00:07.0 0x1e07 0x030000"]
    assert [g.device_id for g in parse_pci(out.stdout.splitlines())] == ["0x2335", "0x1e07"]
