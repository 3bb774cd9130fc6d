"""Datacenter operations against fixture facts: Secure Boot refusal, Ubuntu's signed driver, the NVSwitch fabric
manager (install pinned + held, service after the module loads, fabric wait) and nvidia-persistenced."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from opkit import Reads, run

from gpu_llm.facts.files import FileState
from gpu_llm.facts.gpu import FabricState, GpuInventory, PciGpu
from gpu_llm.facts.host import HostPreflight
from gpu_llm.facts.nvidia import DriverState, Package
from gpu_llm.facts.snapshot import Service
from gpu_llm.operations import nvidia

NOBLE = {"name": "Ubuntu", "major": 24, "minor": 4,
         "release_meta": {"ID": "ubuntu", "VERSION_ID": "24.04", "VERSION_CODENAME": "noble"}}
V = "570.172.08"
KERNEL = "6.8.0-60-generic"
APT = ("DEBIAN_FRONTEND=noninteractive apt-get -y -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=\"--force-confdef\" "
       "-o Dpkg::Options::=\"--force-confold\" install --no-install-recommends")
SWITCHES = [PciGpu(f"0000:0{n}:00.0", "0x22a3") for n in range(5, 9)]
HGX = HostPreflight(os_id="ubuntu-24.04", nvswitches=SWITCHES)
SB = HostPreflight(os_id="ubuntu-24.04", secure_boot=True)
FRESH = DriverState(kernel=KERNEL, headers="available")
# Ubuntu's dependency shapes (github.com/canonical/nvidia-graphics-drivers, 570-server-noble,
# debian/templates/control.in): the headless metapackage has no DKMS and no nvidia-smi (nvidia-utils-570-server)
UBUNTU_SHOW = [
    "Package: nvidia-headless-no-dkms-570-server-open", f"Version: {V}-0ubuntu0.24.04.1",
    f"Depends: nvidia-kernel-common-570-server (>= {V}-0ubuntu0.24.04.1), libnvidia-compute-570-server "
    f"(= {V}-0ubuntu0.24.04.1)", "",
    "Package: nvidia-utils-570-server", f"Version: {V}-0ubuntu0.24.04.1", "Depends: libc6", "",
    f"Package: linux-modules-nvidia-570-server-open-{KERNEL}", "Version: 6.8.0-60.63+1",
    f"Depends: nvidia-kernel-common-570-server (>= {V})", "",
    f"Package: linux-modules-nvidia-570-server-open-{KERNEL}", "Version: 6.8.0-60.63+2",
    "Depends: nvidia-kernel-common-570-server (>= 570.195.03)", ""]
TRANSITIONAL_SHOW = ["Package: nvidia-headless-no-dkms-570-server-open", f"Version: {V}-0ubuntu3",
                     "Depends: nvidia-headless-no-dkms-580-server-open", ""]


def ubuntu(**args):
    return {"branch": "570", "version": V, "source": "ubuntu", **args}


# ---- Secure Boot --------------------------------------------------------------------------------------------------

def test_secure_boot_with_nvidia_source_is_refused_before_any_change():
    facts = {"LinuxDistribution": NOBLE, "NvidiaDriver": FRESH, "Preflight": SB}
    r = run(nvidia.driver_check, facts, branch="570", version=V)
    assert len(r.commands) == 1 and r.commands[0].startswith("refuse: Secure Boot is enabled")
    assert "nvidia_driver_source: ubuntu" in r.commands[0]
    assert run(nvidia.driver, facts, branch="570", version=V).commands == r.commands  # the step refuses too


def test_secure_boot_keeps_a_driver_that_already_runs():
    ours = {"nvidia-driver-570-open": Package("nvidia-driver-570-open", f"{V}-0ubuntu1", True)}
    facts = {"LinuxDistribution": NOBLE, "Preflight": SB,
             "NvidiaDriver": DriverState(packages=ours, smi="ok", smi_driver=V, kernel=KERNEL)}
    r = run(nvidia.driver_check, facts, branch="570", version=V)
    assert r.commands == [] and "Secure Boot on" in r.noops[0]


def test_ubuntu_source_installs_signed_modules_for_the_kernel_and_its_flavour_then_holds():
    after = DriverState(kernel=KERNEL, packages={
        "nvidia-headless-no-dkms-570-server-open": Package("nvidia-headless-no-dkms-570-server-open",
                                                           f"{V}-0ubuntu0.24.04.1", False),
        "nvidia-utils-570-server": Package("nvidia-utils-570-server", f"{V}-0ubuntu0.24.04.1", False),
        "libnvidia-compute-570-server": Package("libnvidia-compute-570-server", f"{V}-0ubuntu0.24.04.1", False)})
    facts = {"LinuxDistribution": NOBLE, "Preflight": SB, "NvidiaDriver": Reads([FRESH, after]),
             "AptShow": UBUNTU_SHOW}
    r = run(nvidia.driver, facts, **ubuntu())
    assert r.commands == [
        f"{APT} nvidia-headless-no-dkms-570-server-open={V}-0ubuntu0.24.04.1 nvidia-utils-570-server="
        f"{V}-0ubuntu0.24.04.1 linux-modules-nvidia-570-server-open-generic "
        f"linux-modules-nvidia-570-server-open-{KERNEL}=6.8.0-60.63+1",
        "apt-mark hold libnvidia-compute-570-server nvidia-headless-no-dkms-570-server-open nvidia-utils-570-server"]
    assert not any("linux-headers" in c or "nvidia-driver-" in c for c in r.commands)  # no DKMS build
    # decide_driver sees the headless metapackage as the installed driver: the next run keeps it
    held = DriverState(kernel=KERNEL, smi="ok", smi_driver=V, packages={
        n: Package(n, p.version, True) for n, p in after.packages.items()})
    kept = run(nvidia.driver, {"LinuxDistribution": NOBLE, "Preflight": SB, "NvidiaDriver": held,
                               "DebPackages": {f"linux-modules-nvidia-570-server-open-{KERNEL}": ["6.8.0-60.63+1"]}},
               **ubuntu())
    assert kept.commands == [] and "is installed and held" in kept.noops[0], kept.noops


def test_ubuntu_source_refuses_when_nvidia_smi_cannot_be_had_at_the_driver_version():
    show = UBUNTU_SHOW[:4] + UBUNTU_SHOW[8:]  # without nvidia-utils-570-server
    assert "Package: nvidia-utils-570-server" not in show
    r = run(nvidia.driver, {"LinuxDistribution": NOBLE, "Preflight": SB, "NvidiaDriver": FRESH, "AptShow": show},
            **ubuntu())
    assert len(r.commands) == 1 and r.commands[0].startswith("refuse: nvidia-utils-570-server is not in"), r.commands


def test_ubuntu_source_refuses_a_transitional_570_saying_what_it_would_install():
    facts = {"LinuxDistribution": NOBLE, "Preflight": SB, "NvidiaDriver": FRESH, "AptShow": TRANSITIONAL_SHOW}
    for op in (nvidia.driver_check, nvidia.driver):
        r = run(op, facts, **ubuntu())
        assert len(r.commands) == 1 and "transitional" in r.commands[0], r.commands
        assert "nvidia-headless-no-dkms-580-server-open" in r.commands[0] and r.commands[0].startswith("refuse: ")


def test_ubuntu_source_check_waits_for_lists_on_a_fresh_host():
    facts = {"LinuxDistribution": NOBLE, "Preflight": SB, "NvidiaDriver": FRESH, "AptShow": []}
    r = run(nvidia.driver_check, facts, **ubuntu())
    assert r.commands == [] and "install nvidia-headless-no-dkms-570-server-open" in r.noops[0]


def test_ubuntu_source_reinstalls_modules_missing_for_the_running_kernel():
    pkgs = {"nvidia-headless-no-dkms-570-server-open": Package("nvidia-headless-no-dkms-570-server-open",
                                                               f"{V}-0ubuntu0.24.04.1", True)}
    state = DriverState(packages=pkgs, smi="no-driver", kernel="6.8.0-62-generic")
    show = ["Package: linux-modules-nvidia-570-server-open-6.8.0-62-generic", "Version: 6.8.0-62.65+1",
            f"Depends: nvidia-kernel-common-570-server (>= {V}-0ubuntu0.24.04.1)", ""]
    facts = {"LinuxDistribution": NOBLE, "NvidiaDriver": state, "DebPackages": {}, "AptShow": show}
    r = run(nvidia.driver, facts, **ubuntu())
    assert r.commands == [f"{APT} linux-modules-nvidia-570-server-open-6.8.0-62-generic=6.8.0-62.65+1"]
    r = run(nvidia.driver, {**facts, "AptShow": []}, **ubuntu())
    assert len(r.commands) == 1 and "has no signed NVIDIA modules installed" in r.commands[0]


# ---- fabric manager ---------------------------------------------------------------------------------------------

FM_SHOW = ["Package: nvidia-fabricmanager-570", f"Version: {V}-1", "",
           "Package: nvidia-fabricmanager-570", "Version: 570.195.03-1", ""]


def loaded(**packages: tuple[str, bool]) -> DriverState:
    return DriverState(packages={n: Package(n, v, h) for n, (v, h) in packages.items()}, smi="ok", smi_driver=V)


def test_no_nvswitch_no_fabric_manager():
    for op in (nvidia.fabric_manager, nvidia.fabric_service, nvidia.fabric_ready):
        args = {"branch": "570", "version": V} if op is nvidia.fabric_manager else (
            {"timeout": 60, "driver_version": V} if op is nvidia.fabric_ready else {})
        r = run(op, {"Preflight": HostPreflight(), "NvidiaDriver": loaded()}, **args)
        assert r.commands == [] and "no NVSwitch on the PCI bus" in r.noops[0]


def test_fabric_manager_installed_at_the_driver_version_and_held():
    after = loaded(**{"nvidia-fabricmanager-570": (f"{V}-1", False)})
    r = run(nvidia.fabric_manager, {"Preflight": HGX, "NvidiaDriver": Reads([loaded(), after]), "AptShow": FM_SHOW},
            branch="570", version=V)
    assert r.commands == [f"{APT} --allow-downgrades --allow-change-held-packages nvidia-fabricmanager-570={V}-1",
                          "apt-mark hold nvidia-fabricmanager-570"]


def test_fabric_manager_at_another_version_is_replaced():
    before = loaded(**{"nvidia-fabricmanager-570": ("570.195.03-1", True)})
    after = loaded(**{"nvidia-fabricmanager-570": (f"{V}-1", True)})
    r = run(nvidia.fabric_manager, {"Preflight": HGX, "NvidiaDriver": Reads([before, after]), "AptShow": FM_SHOW},
            branch="570", version=V)
    assert r.commands == [f"{APT} --allow-downgrades --allow-change-held-packages nvidia-fabricmanager-570={V}-1"]


def test_fabric_manager_missing_from_apt_is_refused_naming_the_setting():
    r = run(nvidia.fabric_manager, {"Preflight": HGX, "NvidiaDriver": loaded(), "AptShow": FM_SHOW[3:]},
            branch="570", version=V)
    assert len(r.commands) == 1 and r.commands[0].startswith("refuse: fabric manager: ")
    assert "570.195.03-1" in r.commands[0] and "nvidia_driver_version" in r.commands[0]


def test_fabric_manager_installed_and_held_is_a_noop():
    state = loaded(**{"nvidia-fabricmanager-570": (f"{V}-1", True)})
    r = run(nvidia.fabric_manager, {"Preflight": HGX, "NvidiaDriver": state}, branch="570", version=V)
    assert r.commands == [] and r.noops == [f"nvidia-fabricmanager-570 {V}-1 is installed and held"]


def test_fabric_service_started_after_the_module_loads():
    svc = {"nvidia-fabricmanager": Service("inactive", "disabled")}
    base = {"Preflight": HGX, "Systemd": True, "Services": svc}
    r = run(nvidia.fabric_service, {**base, "NvidiaDriver": DriverState(smi="no-driver")})
    assert r.commands == [] and "starts after it" in r.noops[0]
    r = run(nvidia.fabric_service, {**base, "NvidiaDriver": loaded()})
    assert r.commands == ["systemctl enable nvidia-fabricmanager", "systemctl start nvidia-fabricmanager"]
    r = run(nvidia.fabric_service, {**base, "NvidiaDriver": loaded(),
                                    "Services": {"nvidia-fabricmanager": Service("active", "enabled")}})
    assert r.commands == [] and r.noops == ["nvidia-fabricmanager is active and enabled"]


DROPIN = (Path(__file__).resolve().parents[2] / "files" / "nvidia-persistenced-gpu-llm.conf").read_bytes()
DROPIN_PATH = "/etc/systemd/system/nvidia-persistenced.service.d/gpu-llm.conf"


def test_persistence_dropin_turns_persistence_mode_on():
    # Ubuntu's unit: static, --no-persistence-mode, StopWhenUnneeded (files/nvidia-persistenced-gpu-llm.conf cites it)
    text = DROPIN.decode()
    assert "ExecStart=\nExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced --persistence-mode" in text
    assert "StopWhenUnneeded=false" in text and "[Install]\nWantedBy=multi-user.target" in text
    assert "--no-persistence-mode" not in text.split("[Unit]", 1)[1]


def test_persistenced_dropin_enable_restart_then_checked_once_the_driver_runs():
    static = {"nvidia-persistenced": Service("active", "static")}
    off = GpuInventory(smi="ok", persistence=["Disabled", "Disabled"])
    facts = {"Systemd": True, "Services": static, "NvidiaDriver": loaded(), "NvidiaGpus": off,
             "FileStates": {DROPIN_PATH: FileState("absent", parent_dir=False)}}
    r = run(nvidia.persistenced, facts, dropin=DROPIN)
    assert r.commands[0] == f"mkdir -p {DROPIN_PATH.rsplit('/', 1)[0]}"
    assert r.commands[-4:-1] == ["systemctl daemon-reload", "systemctl enable nvidia-persistenced",
                                 "systemctl restart nvidia-persistenced"], r.commands
    assert r.commands[-1] == nvidia.PERSISTENCE_CHECK and "Enabled" in r.commands[-1]
    # converged: drop-in in place, enabled through it, persistence mode Enabled: nothing to do
    done = {**facts, "Services": {"nvidia-persistenced": Service("active", "enabled")},
            "NvidiaGpus": GpuInventory(smi="ok", persistence=["Enabled", "Enabled"]),
            "FileStates": {DROPIN_PATH: FileState("file", 644, "root", "root", hashlib.sha256(DROPIN).hexdigest())}}
    r = run(nvidia.persistenced, done, dropin=DROPIN)
    assert r.commands == [] and r.noops == ["nvidia-persistenced is active and enabled; persistence mode Enabled on 2 "
                                            "GPUs"]
    # drift: persistence mode turned off by hand (nvidia-smi -pm 0) -> the daemon is restarted and checked
    r = run(nvidia.persistenced, {**done, "NvidiaGpus": off}, dropin=DROPIN)
    assert r.commands == ["systemctl restart nvidia-persistenced", nvidia.PERSISTENCE_CHECK]
    # stopped -> started (not restarted), checked
    r = run(nvidia.persistenced, {**done, "Services": {"nvidia-persistenced": Service("inactive", "enabled")}},
            dropin=DROPIN)
    assert r.commands == ["systemctl start nvidia-persistenced", nvidia.PERSISTENCE_CHECK]
    r = run(nvidia.persistenced, {"Systemd": True, "Services": {}, "NvidiaDriver": loaded()}, dropin=DROPIN)
    assert r.commands == [] and "not installed" in r.logs[0]
    r = run(nvidia.persistenced, {**facts, "NvidiaDriver": DriverState(smi="no-driver")}, dropin=DROPIN)
    assert r.commands == [] and "not loaded" in r.noops[0]


def test_fabric_ready_is_a_noop_only_when_completed():
    done = [FabricState(i, "Completed", "Success") for i in range(8)]
    facts = {"Preflight": HGX, "Services": {"nvidia-fabricmanager": Service("active", "enabled")},
             "NvidiaGpus": GpuInventory(smi="ok", fabric=done)}
    r = run(nvidia.fabric_ready, facts, timeout=60, driver_version=V)
    assert r.commands == [] and "fabric completed on all 8 GPUs" in r.noops[0]
    facts["NvidiaGpus"] = GpuInventory(smi="ok", fabric=[*done[:7], FabricState(7, "In Progress", "N/A")])
    r = run(nvidia.fabric_ready, facts, timeout=60, driver_version=V)
    assert len(r.commands) == 1 and "nvidia_fabric_timeout" in r.commands[0]


def _fake_bin(tmp: Path, states: str, active: str) -> dict:
    b = tmp / "bin"
    b.mkdir(exist_ok=True)
    (b / "nvidia-smi").write_text(f"#!/bin/sh\nprintf '{states}'\n")
    (b / "systemctl").write_text(f"#!/bin/sh\necho {active}\n")
    (b / "journalctl").write_text("#!/bin/sh\necho 'fm: driver version mismatch'\n")
    for f in b.iterdir():
        f.chmod(0o755)
    import os
    return {**os.environ, "PATH": f"{b}:{os.environ['PATH']}"}


def test_fabric_wait_script_passes_on_completed_and_fails_with_the_log(tmp_path: Path):
    script = nvidia.fabric_wait_script(2, V)
    ok = subprocess.run(["sh", "-c", script], env=_fake_bin(tmp_path, "Completed, Success\\nCompleted, Success\\n",
                                                             "active"), capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    na = subprocess.run(["sh", "-c", script], env=_fake_bin(tmp_path, "N/A, N/A\\n", "active"),
                        capture_output=True, text=True, timeout=30)
    assert na.returncode == 0, na.stderr
    bad = subprocess.run(["sh", "-c", script], env=_fake_bin(tmp_path, "Completed, Success\\nIn Progress, N/A\\n",
                                                              "active"), capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "In Progress" in bad.stderr and "nvidia_fabric_timeout" in bad.stderr
    dead = subprocess.run(["sh", "-c", script], env=_fake_bin(tmp_path, "Not Started, N/A\\n", "failed"),
                          capture_output=True, text=True, timeout=30)
    assert dead.returncode == 1 and "fm: driver version mismatch" in dead.stderr
    assert f"nvidia_driver_version={V}" in dead.stderr


def test_ubuntu_source_refuses_modules_built_for_another_release():
    show = [*UBUNTU_SHOW[:8], *UBUNTU_SHOW[12:]]  # only the module build of 570.195.03
    facts = {"LinuxDistribution": NOBLE, "Preflight": SB, "NvidiaDriver": FRESH, "AptShow": show}
    r = run(nvidia.driver, facts, **ubuntu())
    assert len(r.commands) == 1 and "built for driver 570.195.03, not 570.172.08" in r.commands[0], r.commands


def test_preflight_says_it_saw_the_nvswitches_and_secure_boot():
    from gpu_llm.facts.gpu import parse_pci
    from gpu_llm.operations import preflight

    info = HostPreflight(os_id="ubuntu-24.04", arch="x86_64", uid=0, mount="/", free_kib=64 * 1024 * 1024,
                         pci_gpus=parse_pci(["/sys/bus/pci/devices/0000:18:00.0 0x2330 0x030200"]),
                         nvswitches=SWITCHES, secure_boot=True)
    r = run(preflight.check, {"Preflight": info}, supported_os=["ubuntu-24.04"], required_gib=44)
    assert r.commands == [] and r.noops[0].endswith("1 NVIDIA GPU(s) on PCI, 4 NVSwitch(es), Secure Boot on")


# ---- kernel metapackages with Ubuntu's signed driver ------------------------------------------------------------

KERNEL_CONF = "/etc/apt/apt.conf.d/51gpu-llm-unattended-kernel"


def test_ubuntu_source_holds_the_kernel_flavour_metapackages_and_blacklists_them():
    metas = {n: Package(n, "6.8.0-60.63", False) for n in
             ("linux-generic", "linux-image-generic", "linux-headers-generic-hwe-24.04")}
    metas["linux-headers-generic-hwe-24.04"] = Package("linux-headers-generic-hwe-24.04", "6.8.0-60.63", True)
    facts = {"NvidiaDriver": DriverState(kernel=KERNEL, kernel_meta=metas),
             "FileStates": {KERNEL_CONF: FileState("absent")}}
    r = run(nvidia.kernel_hold, facts, source="ubuntu")
    assert r.commands[-1] == "apt-mark hold linux-generic linux-image-generic"  # the held one is not held again
    conf = nvidia.unattended_kernel_conf(sorted(metas)).decode()
    for name in metas:
        assert f'"{name}$";' in conf
    assert "Unattended-Upgrade::Package-Blacklist {" in conf and "nvidia_driver_version" in conf
    # converged: all held, file in place -> nothing to do
    held = {n: Package(n, p.version, True) for n, p in metas.items()}
    done = {"NvidiaDriver": DriverState(kernel=KERNEL, kernel_meta=held), "FileStates": {KERNEL_CONF: FileState(
        "file", 644, "root", "root", hashlib.sha256(conf.encode()).hexdigest())}}
    r = run(nvidia.kernel_hold, done, source="ubuntu")
    assert r.commands == [] and "are held and kept from unattended-upgrades" in r.noops[0]
    # NVIDIA's DKMS driver follows kernels itself: nothing held
    r = run(nvidia.kernel_hold, facts, source="nvidia")
    assert r.commands == [] and "DKMS" in r.noops[0]


def test_kernel_metapackages_are_read_in_the_driver_part():
    from gpu_llm.facts.nvidia import NvidiaDriver, parse_driver_state

    assert "linux-image-$f-hwe-*" in NvidiaDriver().command(smi=False)
    state = parse_driver_state(["##gpu-llm:kernelmeta", "hi |linux-generic|6.8.0-60.63",
                                "ii |linux-image-generic|6.8.0-60.63", "un |linux-headers-generic|"])
    assert state.kernel_meta == {"linux-generic": Package("linux-generic", "6.8.0-60.63", True),
                                 "linux-image-generic": Package("linux-image-generic", "6.8.0-60.63", False)}


def test_fabric_ready_refuses_at_once_without_a_fabric_manager_unit():
    facts = {"Preflight": HGX, "Services": {}, "NvidiaGpus": GpuInventory(smi="ok", fabric=[
        FabricState(0, "Not Started", "N/A")])}
    r = run(nvidia.fabric_ready, facts, timeout=300, driver_version=V)
    assert len(r.commands) == 1 and r.commands[0].startswith("refuse: NVSwitches are on the PCI bus but the "
                                                             "nvidia-fabricmanager service is not installed")
    assert "nvidia_driver_install" in r.commands[0] and "sleep" not in r.commands[0]  # no wait
