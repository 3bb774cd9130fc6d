"""Fact parsing: real H200 outputs (tests/fixtures/nvidia-smi/) and the failure states of nvidia-smi."""

from __future__ import annotations

import pytest

from opkit import fixture_lines

from gpu_llm.facts import MARK
from gpu_llm.facts.docker_daemon import DockerDaemonJson
from gpu_llm.facts.gpu import NvidiaGpus, parse_pci, parse_query_gpu, parse_topology, smi_state
from gpu_llm.facts.host import Preflight
from gpu_llm.facts.nvidia import NvidiaDriver, parse_module_version, parse_smi_header


def section(name: str, lines: list[str]) -> list[str]:
    return [MARK + name, *lines]


def test_query_gpu_real_h200_output():
    (gpu,) = parse_query_gpu(fixture_lines("query-gpu.csv"), "pcie")
    assert gpu.index == 0 and gpu.name == "NVIDIA H200"
    assert gpu.memory_mib == 143771 and gpu.compute_capability == (9, 0)
    assert gpu.driver_version == "580.159.04" and gpu.pci_bus_id == "00000000:00:06.0"
    assert gpu.uuid == "GPU-eb3db77d-6b18-9154-a5eb-7b64223dc723" and gpu.interconnect == "pcie"


def test_topology_single_gpu_real_output_is_pcie():
    assert parse_topology(fixture_lines("topo.txt")) == "pcie"


def test_topology_nvlink_and_pcie_only():
    assert parse_topology(fixture_lines("topo-nvlink-4gpu.txt")) == "nvlink"
    assert parse_topology(fixture_lines("topo-pcie-2gpu.txt")) == "pcie"
    assert parse_topology([]) is None


def test_sysfs_pci_real_output():
    (gpu,) = parse_pci(fixture_lines("sysfs-pci.txt"))
    assert (gpu.address, gpu.device_id) == ("0000:00:06.0", "0x2335")


def test_pci_skips_nvidia_audio_function():
    lines = ["/sys/bus/pci/devices/0000:01:00.1 0x10f7 0x040300", "/sys/bus/pci/devices/0000:01:00.0 0x1e07 0x030000"]
    assert [g.address for g in parse_pci(lines)] == ["0000:01:00.0"]


def test_smi_states_are_distinguishable():
    assert smi_state(None, []) == "missing"
    assert smi_state(9, fixture_lines("smi-no-driver.txt")) == "no-driver"
    assert smi_state(18, fixture_lines("smi-mismatch.txt")) == "mismatch"
    assert smi_state(9, fixture_lines("smi-mismatch.txt")) == "mismatch"  # older releases: message decides
    assert smi_state(0, fixture_lines("query-gpu.csv")) == "ok"
    assert smi_state(6, ["No devices were found"]) == "error"


def test_gpus_fact_with_driver_uses_smi_and_topology():
    out = (section("pci", fixture_lines("sysfs-pci.txt")) + section("smi", fixture_lines("query-gpu.csv"))
           + section("rc", ["0"]) + section("topo", fixture_lines("topo.txt")))
    inv = NvidiaGpus().process(out)
    assert inv.smi == "ok" and [g.name for g in inv.gpus] == ["NVIDIA H200"]
    assert inv.gpus[0].interconnect == "pcie" and inv.gpus[0].memory_mib == 143771


def test_gpus_fact_before_driver_falls_back_to_pci():
    out = section("pci", fixture_lines("sysfs-pci.txt")) + section("smi", []) + section("rc", ["missing"])
    inv = NvidiaGpus().process(out)
    assert inv.smi == "missing"
    (gpu,) = inv.gpus
    assert gpu.name == "NVIDIA 0x2335" and gpu.memory_mib == 0 and gpu.compute_capability == (0, 0)
    assert gpu.driver_version is None and gpu.pci_bus_id == "0000:00:06.0"


def test_gpus_fact_driver_not_loaded_keeps_message():
    out = (section("pci", fixture_lines("sysfs-pci.txt")) + section("smi", fixture_lines("smi-no-driver.txt"))
           + section("rc", ["9"]))
    inv = NvidiaGpus().process(out)
    assert inv.smi == "no-driver" and "couldn't communicate" in inv.message and len(inv.gpus) == 1


def test_smi_header_from_real_q_output():
    assert parse_smi_header(fixture_lines("smi-q.txt")) == ("580.159.04", "13.0")
    table = ["| NVIDIA-SMI 570.153.02             Driver Version: 570.153.02     CUDA Version: 12.8     |"]
    assert parse_smi_header(table) == ("570.153.02", "12.8")


def test_module_version_from_proc_and_sys():
    assert parse_module_version(fixture_lines("proc-version.txt")) == "580.159.04"
    assert parse_module_version(["570.153.02"]) == "570.153.02"
    assert parse_module_version([]) is None


def test_driver_fact_installed_held_loaded():
    out = (section("dpkg", ["hi |nvidia-driver-570-open|570.153.02-0ubuntu1", "ii |libnvidia-compute-570|570.153.02-0ubuntu1",
                            "un |nvidia-driver-575-open|", "ii |nvidia-container-toolkit|1.17.8-1"])
           + section("module", ["570.153.02"]) + section("smi", ["Driver Version: 570.153.02  CUDA Version: 12.8"])
           + section("rc", ["0"]) + section("kernel", ["6.8.0-60-generic"]) + section("headers", ["installed"])
           + section("reboot", []) + section("nouveau", []))
    st = NvidiaDriver().process(out)
    assert set(st.packages) == {"nvidia-driver-570-open", "libnvidia-compute-570", "nvidia-container-toolkit"}
    assert st.packages["nvidia-driver-570-open"].held and not st.packages["libnvidia-compute-570"].held
    assert list(st.drivers) == ["nvidia-driver-570-open"]
    assert (st.module_version, st.smi, st.smi_driver, st.smi_cuda) == ("570.153.02", "ok", "570.153.02", "12.8")
    assert st.kernel == "6.8.0-60-generic" and not st.reboot_required and not st.nouveau_loaded


def test_driver_fact_mismatch_and_reboot_flag():
    out = (section("dpkg", []) + section("module", fixture_lines("proc-version.txt"))
           + section("smi", fixture_lines("smi-mismatch.txt")) + section("rc", ["18"])
           + section("kernel", ["6.8.0"]) + section("headers", ["available"]) + section("reboot", ["required"])
           + section("nouveau", ["loaded"]))
    st = NvidiaDriver().process(out)
    assert st.smi == "mismatch" and st.smi_driver is None and "version mismatch" in st.smi_message
    assert st.module_version == "580.159.04" and st.reboot_required and st.nouveau_loaded
    assert st.headers == "available"


def test_preflight_fact_real_os_release_and_pci():
    out = (section("os", fixture_lines("os-release.txt")) + section("arch", ["x86_64"]) + section("uid", ["0"])
           + section("sudo", []) + section("path", ["/home"])
           + section("df", ["/dev/vda 263174212 17825792 67108864 21% /"])
           + section("pci", fixture_lines("sysfs-pci.txt")))
    info = Preflight().process(out)
    assert (info.os_id, info.codename, info.arch, info.uid) == ("ubuntu-24.04", "noble", "x86_64", 0)
    assert info.free_kib == 67108864 and info.mount == "/" and info.checked_path == "/home"
    assert len(info.pci_gpus) == 1
    assert info.dpkg_interrupted is False  # no dpkg section: nothing in the update journal


@pytest.mark.parametrize(("journal", "interrupted"), [([], False), (["0000"], True), (["0003", "tmp.i"], True),
                                                      (["tmp.i"], False)])
def test_preflight_fact_sees_an_interrupted_dpkg_run(journal, interrupted):
    out = section("os", fixture_lines("os-release.txt")) + section("dpkg", journal)
    assert Preflight().process(out).dpkg_interrupted is interrupted


def test_daemon_json_fact():
    assert DockerDaemonJson().process([]).exists is False
    dj = DockerDaemonJson().process(["present", '{"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}},',
                                     '"data-root": "/data/docker"}'])
    assert dj.exists and dj.data["data-root"] == "/data/docker" and not dj.error
    assert "not valid JSON" in DockerDaemonJson().process(["present", "{oops"]).error
    assert DockerDaemonJson().process(["present", ""]).data == {}
