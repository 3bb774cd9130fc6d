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


def test_scan_lists_nvswitches_and_flags_them_for_the_fabric_query(tmp_path: Path) -> None:
    from gpu_llm.facts.gpu import parse_nvswitches

    _device(tmp_path, "0000:18:00.0", "0x10de", "0x2330", "0x030200")  # H100 SXM
    _device(tmp_path, "0000:05:00.0", "0x10de", "0x22a3", "0x068000")  # NVSwitch (other bridge)
    _device(tmp_path, "0000:06:00.0", "0x8086", "0x1234", "0x068000")  # someone else's bridge of that class
    cmd = PCI_COMMAND.replace("/sys/bus/pci/devices", str(tmp_path)) + '; echo "nvsw=$nvsw"'
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[-1] == "nvsw=1"
    assert [s.address for s in parse_nvswitches(out)] == ["0000:05:00.0"]
    assert [g.address for g in parse_pci(out)] == ["0000:18:00.0"]
    (tmp_path / "0000:05:00.0" / "class").write_text("0x030200\n")
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[-1] == "nvsw="


def test_secure_boot_from_mokutil_or_the_efi_variable() -> None:
    from gpu_llm.facts.host import parse_secure_boot

    assert parse_secure_boot(["SecureBoot enabled"]) is True
    assert parse_secure_boot(["SecureBoot disabled", "efivar    1"]) is False  # mokutil's words win
    assert parse_secure_boot(["efivar    1"]) is True and parse_secure_boot(["efivar 0"]) is False
    assert parse_secure_boot(["EFI variables are not supported on this system"]) is None
    assert parse_secure_boot([]) is None
