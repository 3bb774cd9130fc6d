"""Pure datacenter decisions (gpu_llm/plan/datacenter.py): fabric readiness, Secure Boot, Ubuntu's -server driver,
the NVSwitch interconnect, and the planner keeping NVLink hosts free of PCIe-only workarounds."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gpu_llm.facts.gpu import parse_fabric, parse_inventory, parse_nvswitches
from gpu_llm.plan import ServeConfig, plan_instances
from gpu_llm.plan.datacenter import (
    Stanza,
    choose_version,
    fabric_packages,
    fabric_verdict,
    interconnect,
    kernel_flavour,
    parse_stanzas,
    secure_boot_refusal,
    ubuntu_driver,
)
from gpu_llm.plan.types import GPU
from gpu_llm.settings import Settings


@dataclass
class F:
    index: int
    state: str
    status: str


def test_fabric_ready_only_when_every_gpu_completed_and_service_active():
    done = [F(i, "Completed", "Success") for i in range(8)]
    assert fabric_verdict(done, "active").kind == "ready"
    assert fabric_verdict(done, "inactive").kind == "failed"
    assert "inactive" in fabric_verdict(done, "inactive").detail
    waiting = fabric_verdict([*done[:7], F(7, "In Progress", "N/A")], "active")
    assert waiting.kind == "waiting" and "GPU 7 In Progress" in waiting.detail
    failed = fabric_verdict([*done[:7], F(7, "Completed", "NVML_ERROR_INSUFFICIENT_RESOURCES")], "active")
    assert failed.kind == "failed" and "GPU 7" in failed.detail


def test_gpus_without_fabric_state_need_only_the_running_service():
    na = [F(i, "N/A", "N/A") for i in range(8)]
    assert fabric_verdict(na, "active").kind == "ready"
    assert fabric_verdict(na, "failed").kind == "failed"


def test_fabric_manager_package_follows_the_branch():
    assert fabric_packages("570") == ("nvidia-fabricmanager-570",)


@pytest.mark.parametrize(("secure_boot", "source", "kind", "refused"), [
    (True, "nvidia", "install", True), (True, "nvidia", "replace", True),
    (True, "nvidia", "ok", False),  # a driver that runs was loaded: kept
    (True, "ubuntu", "install", False), (False, "nvidia", "install", False), (None, "nvidia", "install", False),
])
def test_secure_boot_refuses_only_installing_unsigned_modules(secure_boot, source, kind, refused):
    why = secure_boot_refusal(secure_boot, source, kind)
    assert (why is not None) == refused
    if refused:
        assert "nvidia_driver_source" in why and "ubuntu" in why and "nvidia" in why


@pytest.mark.parametrize(("kernel", "flavour"), [("6.8.0-60-generic", "generic"), ("6.8.0-1030-aws", "aws"),
                                                 ("6.8.0-1024-azure-fde", "azure-fde"),
                                                 ("6.18.44-fc-v669", "fc-v669")])
def test_kernel_flavour(kernel, flavour):
    assert kernel_flavour(kernel) == flavour


def test_kernel_without_flavour_is_an_error():
    with pytest.raises(ValueError, match="no flavour"):
        kernel_flavour("6.8.0")


def test_ubuntu_driver_packages_as_ubuntu_drivers_selects_them():
    d = ubuntu_driver("570", True, "6.8.0-60-generic")
    # the headless metapackage without DKMS (an unsigned build) + nvidia-smi's package, as `--gpgpu` selects them
    assert d.packages == ("nvidia-headless-no-dkms-570-server-open", "nvidia-utils-570-server",
                          "linux-modules-nvidia-570-server-open-generic",
                          "linux-modules-nvidia-570-server-open-6.8.0-60-generic")
    assert ubuntu_driver("570", False, "6.8.0-60-generic").driver == "nvidia-headless-no-dkms-570-server"
    assert not any("dkms" in p and "no-dkms" not in p for p in d.packages)


SHOW = """Package: nvidia-driver-570-server-open
Version: 570.172.08-0ubuntu0.24.04.1
Depends: nvidia-utils-570-server (= 570.172.08-0ubuntu0.24.04.1),
 libnvidia-compute-570-server (= 570.172.08-0ubuntu0.24.04.1)
Description: NVIDIA driver metapackage

Package: nvidia-driver-570-server-open
Version: 570.211.01-0ubuntu1.24.04.1
Depends: nvidia-driver-580-server-open
Description: transitional package
"""


def test_choose_the_archive_version_that_is_the_driver():
    stanzas = parse_stanzas(SHOW.splitlines())
    assert [s.version for s in stanzas] == ["570.172.08-0ubuntu0.24.04.1", "570.211.01-0ubuntu1.24.04.1"]
    assert "libnvidia-compute-570-server" in stanzas[0].depends  # continuation line joined
    assert choose_version(stanzas, "nvidia-driver-570-server-open", "570.172.08", "570", "Ubuntu") == \
        ("570.172.08-0ubuntu0.24.04.1", "")


def test_transitional_package_pulling_another_branch_is_refused_saying_what_it_installs():
    stanzas = parse_stanzas(SHOW.splitlines())
    chosen, why = choose_version(stanzas, "nvidia-driver-570-server-open", "570.211.01", "570", "Ubuntu's archive")
    assert chosen is None
    assert "transitional" in why and "nvidia-driver-580-server-open" in why and "nvidia_driver_source" in why


def test_missing_version_names_what_is_offered():
    stanzas = [Stanza("nvidia-fabricmanager-570", "570.195.03-1")]
    chosen, why = choose_version(stanzas, "nvidia-fabricmanager-570", "570.172.08", "570", "apt")
    assert chosen is None and "570.195.03-1" in why and "nvidia_driver_version" in why
    assert choose_version([], "x", "570.172.08", "570", "apt")[1].startswith("x is not in this host's apt lists")


def test_modules_match_the_exact_release_and_alternatives_count_by_their_first():
    from gpu_llm.plan.datacenter import choose_modules

    mods = "linux-modules-nvidia-570-server-open-6.8.0-60-generic"
    built = [Stanza(mods, "6.8.0-60.63+1", "nvidia-kernel-common-570-server (>= 570.172.081-0ubuntu1)"),
             Stanza(mods, "6.8.0-60.63+2", "nvidia-kernel-common-570-server (>= 570.172.08-0ubuntu0.24.04.1)")]
    assert choose_modules(built, mods, "570.172.08") == ("6.8.0-60.63+2", "")  # not the 570.172.081 build
    assert choose_modules(built[:1], mods, "570.172.08")[0] is None
    alt = [Stanza("libnvidia-x-570", "570.172.08-1", "libnvidia-y-570 (= 570.172.08-1) | libnvidia-y-580")]
    assert choose_version(alt, "libnvidia-x-570", "570.172.08", "570", "apt") == ("570.172.08-1", "")
    swapped = [Stanza("libnvidia-x-570", "570.172.08-1", "libnvidia-y-580 | libnvidia-y-570")]
    assert choose_version(swapped, "libnvidia-x-570", "570.172.08", "570", "apt")[0] is None


def test_nvswitch_hosts_are_nvlink_whatever_topo_says():
    assert interconnect("pcie", 4) == "nvlink"
    assert interconnect(None, 4) == "nvlink"
    assert interconnect("pcie", 0) == "pcie"


PCI = ["/sys/bus/pci/devices/0000:18:00.0 0x2330 0x030200", "/sys/bus/pci/devices/0000:05:00.0 0x22a3 0x068000"]


def test_inventory_sees_nvswitches_and_fabric():
    lines = ["##gpu-llm:pci", *PCI, "##gpu-llm:smi",
             "0, NVIDIA H100 80GB HBM3, GPU-1, 81559, 9.0, 570.172.08, 00000000:18:00.0",
             "##gpu-llm:rc", "0", "##gpu-llm:fabric", "0, In Progress, N/A"]
    inv = parse_inventory(lines)
    assert [s.device_id for s in inv.nvswitches] == ["0x22a3"] and [g.device_id for g in inv.pci] == ["0x2330"]
    assert inv.gpus[0].interconnect == "nvlink"  # one GPU, no topo: the switch says it
    assert [(f.index, f.state) for f in inv.fabric] == [(0, "In Progress")]
    assert parse_nvswitches(PCI[:1]) == [] and parse_fabric(["bad"]) == []


def test_inventory_reads_persistence_mode_in_the_same_query():
    from gpu_llm.facts.gpu import QUERY_FIELDS

    assert QUERY_FIELDS.endswith(",persistence_mode")  # one --query-gpu call for GPUs, driver state and this
    lines = ["##gpu-llm:pci", *PCI, "##gpu-llm:smi",
             "0, NVIDIA H100 80GB HBM3, GPU-1, 81559, 9.0, 570.172.08, 00000000:18:00.0, Enabled",
             "1, NVIDIA H100 80GB HBM3, GPU-2, 81559, 9.0, 570.172.08, 00000000:19:00.0, Disabled",
             "##gpu-llm:rc", "0"]
    inv = parse_inventory(lines)
    assert inv.persistence == ["Enabled", "Disabled"] and [g.uuid for g in inv.gpus] == ["GPU-1", "GPU-2"]
    # a line without the field (older output) still gives the GPU, no persistence reading
    old = parse_inventory([*lines[:4], lines[4].rsplit(",", 1)[0], "##gpu-llm:rc", "0"])
    assert old.persistence == [] and len(old.gpus) == 1


def test_planner_gives_nvswitch_hosts_no_pcie_workarounds():
    s = Settings.from_data({"vllm_image": "vllm/vllm-openai:v0.10.1", "vllm_layout": "tensor-parallel"})
    link = interconnect("pcie", 4)  # even a topology read as PCIe: the NVSwitches link every pair
    gpus = [GPU(i, "NVIDIA H100 80GB HBM3", 81559, (9, 0), "570.172.08", interconnect=link) for i in range(8)]
    (plan,) = plan_instances(gpus, ServeConfig.from_settings(s))
    assert plan.tensor_parallel_size == 8
    assert "--disable-custom-all-reduce" not in plan.vllm_args and "NCCL_P2P_DISABLE" not in plan.env
    pcie = [GPU(i, g.name, g.memory_mib, g.compute_capability, g.driver_version, interconnect="pcie")
            for i, g in enumerate(gpus)]
    (plan,) = plan_instances(pcie, ServeConfig.from_settings(s))
    assert "--disable-custom-all-reduce" in plan.vllm_args  # the same GPUs on PCIe only do get them
