"""Operations against fixture facts: what each yields (or the noop it reports) for each host state."""

from __future__ import annotations

import json

import pytest
from opkit import Reads, fixture_lines, run

from gpu_llm.facts.docker_daemon import DaemonJson
from gpu_llm.facts.gpu import parse_pci
from gpu_llm.facts.host import HostPreflight
from gpu_llm.facts.nvidia import DriverState, Package
from gpu_llm.operations import docker, nvidia, preflight

NOBLE = {"name": "Ubuntu", "major": 24, "minor": 4,
         "release_meta": {"ID": "ubuntu", "VERSION_ID": "24.04", "VERSION_CODENAME": "noble"}}
ROCKY = {"name": "Rocky Linux", "major": 9, "minor": 4, "release_meta": {"ID": "rocky", "VERSION_ID": "9.4"}}
V = "570.153.02"
PV = "570.153.02-0ubuntu1"
DRIVER = {"branch": "570", "version": V}


def pkgs(*entries: tuple[str, str, bool]) -> dict[str, Package]:
    return {n: Package(n, v, h) for n, v, h in entries}


def ours(held: bool = True) -> dict[str, Package]:
    return pkgs(("nvidia-driver-570-open", PV, held), ("libnvidia-compute-570", PV, held),
                ("nvidia-dkms-570-open", PV, held))


# ---- preflight ---------------------------------------------------------------------------------------------

GOOD = HostPreflight(os_id="ubuntu-24.04", os_name="Ubuntu 24.04.3 LTS", arch="x86_64", uid=0, checked_path="/home",
                     mount="/", free_kib=64 * 1024 * 1024, pci_gpus=parse_pci(fixture_lines("sysfs-pci.txt")))
ARGS = {"supported_os": ["ubuntu-24.04", "ubuntu-22.04", "debian-12"], "required_gib": 44}


def test_preflight_passes_with_noop_saying_what_holds():
    r = run(preflight.check, {"Preflight": GOOD}, **ARGS)
    assert r.commands == []
    assert r.noops == ["preflight passed: ubuntu-24.04 x86_64, uid 0, 64.0 GiB free on / (>= 44.0 GiB), "
                       "1 NVIDIA GPU(s) on PCI"]


@pytest.mark.parametrize(("change", "expected"), [
    ({"os_id": "rocky-9.4", "os_name": "Rocky Linux 9.4"}, "unsupported OS Rocky Linux 9.4 (rocky-9.4)"),
    ({"arch": "aarch64"}, "unsupported CPU architecture aarch64"),
    ({"uid": 1000, "sudo": True}, "not running as root (uid 1000); sudo works without a password: add --sudo"),
    ({"free_kib": 20 * 1024 * 1024}, "20.0 GiB free on / (holding /home), 44.0 GiB needed"),
    ({"pci_gpus": []}, "no NVIDIA GPU on the PCI bus"),
])
def test_preflight_refuses_naming_the_problem(change, expected):
    info = HostPreflight(**{**GOOD.__dict__, **change})
    r = run(preflight.check, {"Preflight": info}, **ARGS)
    assert len(r.commands) == 1 and r.commands[0].startswith("refuse: preflight failed: ")
    assert expected in r.commands[0] and r.noops == []


def test_preflight_gpu_less_host_allowed_when_not_required():
    info = HostPreflight(**{**GOOD.__dict__, "pci_gpus": []})
    assert run(preflight.check, {"Preflight": info}, require_gpu=False, **ARGS).commands == []


def test_preflight_of_a_host_without_the_gpu_stack_names_what_the_disk_is_for():
    """deploys.preflight.service_preflight's arguments: no GPU needed, a little disk, the OS still checked."""
    from gpu_llm.deploys.preflight import SERVICE_HOST_GIB

    args = {"supported_os": ["ubuntu-24.04"], "required_gib": SERVICE_HOST_GIB, "require_gpu": False,
            "gpus_needed": (0, ""), "disk_for": "venvs and packages"}
    assert run(preflight.check, {"Preflight": HostPreflight(**{**GOOD.__dict__, "pci_gpus": []})}, **args).commands == []
    low = HostPreflight(**{**GOOD.__dict__, "pci_gpus": [], "free_kib": 1024 * 1024, "os_id": "debian-12"})
    refusal = run(preflight.check, {"Preflight": low}, **args).commands[0]
    assert "1.0 GiB free on / (holding /home), 2.0 GiB needed (venvs and packages)" in refusal
    assert "unsupported OS" in refusal


def test_preflight_refusal_is_announced_while_planning():
    info = HostPreflight(**{**GOOD.__dict__, "arch": "aarch64"})
    r = run(preflight.check, {"Preflight": info}, executing=False, **ARGS)
    assert any(m.startswith("will refuse: preflight failed") for m in r.logs)


def test_interrupted_dpkg_run_is_finished_keeping_config_files():
    info = HostPreflight(**{**GOOD.__dict__, "dpkg_interrupted": True})
    r = run(preflight.dpkg_finished, {"Preflight": info})
    assert r.commands == ["DEBIAN_FRONTEND=noninteractive dpkg --configure -a --force-confdef --force-confold"]
    clean = run(preflight.dpkg_finished, {"Preflight": GOOD})
    assert clean.commands == [] and clean.noops == ["no interrupted dpkg run to finish"]


# ---- driver ------------------------------------------------------------------------------------------------

def test_driver_spec_names_and_versions():
    assert nvidia.driver_spec("ubuntu-24.04", "570", V, True).packages == ("nvidia-driver-570-open",)
    assert nvidia.driver_spec("ubuntu-24.04", "570", V, False).packages == ("nvidia-driver-570",)
    assert nvidia.driver_spec("ubuntu-22.04", "570", V, True).package_version == PV
    assert nvidia.driver_spec("debian-12", "570", V, True).package_version == f"{V}-1"


def test_driver_fresh_host_installs_pinned_version_then_holds():
    before = DriverState(kernel="6.8.0-60-generic", headers="available")
    after = DriverState(packages=ours(held=False), kernel="6.8.0-60-generic", headers="installed")
    r = run(nvidia.driver, {"LinuxDistribution": NOBLE, "NvidiaDriver": Reads([before, after])}, **DRIVER)
    assert r.commands == [
        "DEBIAN_FRONTEND=noninteractive apt-get -y -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=\"--force-confdef\" -o "
        "Dpkg::Options::=\"--force-confold\" install --no-install-recommends linux-headers-6.8.0-60-generic "
        f"nvidia-driver-570-open={PV}",
        "apt-mark hold libnvidia-compute-570 nvidia-dkms-570-open nvidia-driver-570-open",
    ]


def test_driver_fresh_host_without_headers_package_warns():
    before, after = DriverState(kernel="6.1.0-37-amd64", headers="missing"), DriverState(packages=ours())
    r = run(nvidia.driver, {"LinuxDistribution": NOBLE, "NvidiaDriver": Reads([before, after])}, **DRIVER)
    assert "linux-headers" not in r.commands[0] and r.commands[0].endswith(f"nvidia-driver-570-open={PV}")
    assert any("linux-headers-6.1.0-37-amd64 is not in apt" in m for m in r.logs)


@pytest.mark.parametrize("in_apt", [True, False])
def test_driver_install_asks_apt_for_headers_only_when_the_snapshot_left_it_unknown(in_apt):
    """The host snapshot says "unknown" for headers that are not installed; only a DKMS install asks apt."""
    from gpu_llm.facts.nvidia import AptShow

    before = DriverState(kernel="6.8.0-60-generic", headers="unknown")
    show = ["Package: linux-headers-6.8.0-60-generic", "Version: 6.8.0-60.63", ""] if in_apt else []  # apt-cache show
    r = run(nvidia.driver, {"LinuxDistribution": NOBLE, "NvidiaDriver": Reads([before, DriverState(packages=ours())]),
                            AptShow.__name__: show}, **DRIVER)
    assert ("linux-headers-6.8.0-60-generic" in r.commands[0]) is in_apt
    assert any("is not in apt" in m for m in r.logs) is not in_apt


def test_driver_same_version_held_is_noop():
    st = DriverState(packages=ours(), module_version=V, smi="ok", smi_driver=V)
    r = run(nvidia.driver, {"LinuxDistribution": NOBLE, "NvidiaDriver": st}, **DRIVER)
    assert r.commands == [] and r.noops == [f"nvidia-driver-570-open {PV} is installed and held"]


def test_driver_same_version_not_held_gets_held():
    st = DriverState(packages={**ours(), "libnvidia-gl-570": Package("libnvidia-gl-570", PV, False)})
    r = run(nvidia.driver, {"LinuxDistribution": NOBLE, "NvidiaDriver": st}, **DRIVER)
    assert r.commands == ["apt-mark hold libnvidia-gl-570"]


def test_driver_other_apt_driver_refused_without_replace():
    st = DriverState(packages=pkgs(("nvidia-driver-575-open", "575.57.08-0ubuntu1", True)), module_version="575.57.08")
    r = run(nvidia.driver, {"LinuxDistribution": NOBLE, "NvidiaDriver": st}, **DRIVER)
    (cmd,) = r.commands
    assert cmd.startswith("refuse: the host has NVIDIA driver nvidia-driver-575-open 575.57.08-0ubuntu1 from apt")
    assert "nvidia_driver_replace: true" in cmd


def test_driver_check_refuses_what_the_driver_op_would_before_any_change():
    st = DriverState(packages=pkgs(("nvidia-driver-575-open", "575.57.08-0ubuntu1", True)), module_version="575.57.08")
    facts = {"LinuxDistribution": NOBLE, "NvidiaDriver": st}
    (cmd,) = run(nvidia.driver_check, facts, **DRIVER).commands
    assert cmd == run(nvidia.driver, facts, **DRIVER).commands[0]
    assert "575.57.08-0ubuntu1" in cmd and "nvidia_driver_replace: true" in cmd


@pytest.mark.parametrize(("packages", "replace", "noop"), [
    ((), False, f"NVIDIA driver: install nvidia-driver-570-open {PV}"),
    ((("nvidia-driver-570-open", PV, True),), False, f"NVIDIA driver: nvidia-driver-570-open {PV} is installed"),
    ((("nvidia-driver-575-open", "575.57.08-0ubuntu1", True),), True,
     f"NVIDIA driver: replace nvidia-driver-575-open 575.57.08-0ubuntu1 with nvidia-driver-570-open {PV}"),
])
def test_driver_check_passes_with_what_the_driver_op_will_do(packages, replace, noop):
    st = DriverState(packages=pkgs(*packages))
    r = run(nvidia.driver_check, {"LinuxDistribution": NOBLE, "NvidiaDriver": st}, replace=replace, **DRIVER)
    assert r.commands == [] and r.noops == [noop]


def test_driver_other_flavour_same_version_is_a_conflict():
    st = DriverState(packages=pkgs(("nvidia-driver-570", PV, False)))
    r = run(nvidia.driver, {"LinuxDistribution": NOBLE, "NvidiaDriver": st}, **DRIVER)
    assert r.commands[0].startswith("refuse: the host has NVIDIA driver nvidia-driver-570 ")


def test_driver_replace_purges_old_release_then_installs():
    old = "575.57.08-0ubuntu1"
    before = DriverState(packages=pkgs(("nvidia-driver-575-open", old, True), ("libnvidia-compute-575", old, False),
                                       ("nvidia-container-toolkit", "1.17.8-1", False)), headers="installed",
                         kernel="6.8.0")
    after = DriverState(packages={**ours(held=False), "nvidia-container-toolkit": Package("x", "1.17.8-1", False)})
    r = run(nvidia.driver, {"LinuxDistribution": NOBLE, "NvidiaDriver": Reads([before, after])}, replace=True,
            **DRIVER)
    assert r.commands[0] == "apt-mark unhold nvidia-driver-575-open"
    assert r.commands[1].endswith("purge --allow-change-held-packages libnvidia-compute-575 nvidia-driver-575-open")
    assert "--allow-downgrades --allow-change-held-packages" in r.commands[2]
    assert r.commands[2].endswith(f"nvidia-driver-570-open={PV}")
    assert r.commands[3] == "apt-mark hold libnvidia-compute-570 nvidia-dkms-570-open nvidia-driver-570-open"


def test_driver_not_from_apt_is_left_alone_with_warning():
    st = DriverState(module_version="580.159.04", smi="ok", smi_driver="580.159.04", smi_cuda="13.0")
    r = run(nvidia.driver, {"LinuxDistribution": NOBLE, "NvidiaDriver": st}, required_cuda="12.8", **DRIVER)
    assert r.commands == []
    assert r.noops and "580.159.04 (CUDA 13.0) was not installed by apt" in r.noops[0]
    assert any(m.startswith("warning: ") for m in r.logs)


def test_driver_not_from_apt_too_old_for_cuda_is_refused():
    st = DriverState(module_version="535.183.01", smi="ok", smi_driver="535.183.01", smi_cuda="12.2")
    r = run(nvidia.driver, {"LinuxDistribution": NOBLE, "NvidiaDriver": st}, required_cuda="12.8", **DRIVER)
    assert r.commands[0].startswith("refuse: the host runs NVIDIA driver 535.183.01 not installed by apt")
    assert "supports CUDA 12.2, but CUDA 12.8 is needed" in r.commands[0]


# ---- reboot ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("state", "reason"), [
    (DriverState(packages=ours(), module_version=V), None),
    (DriverState(packages=ours(), module_version="575.57.08"), "the loaded NVIDIA kernel module is 575.57.08"),
    (DriverState(packages=ours(), reboot_required=True), "no NVIDIA kernel module is loaded and /var/run/reboot"),
    (DriverState(packages=ours()), None),
    (DriverState(packages=ours(), smi="mismatch"), "driver/library version mismatch"),
    (DriverState(packages=ours(), smi="ok", smi_driver="575.57.08"), "module is 575.57.08 but 570.153.02"),
    (DriverState(module_version="580.159.04", reboot_required=True), None),  # not our apt driver
])
def test_reboot_reason(state, reason):
    got = nvidia.reboot_reason(state, nvidia.driver_spec("ubuntu-24.04", "570", V, True))
    assert (got is None) if reason is None else (reason in got)


def test_reboot_not_needed_is_noop():
    r = run(nvidia.reboot_for_driver, {"LinuxDistribution": NOBLE,
                                       "NvidiaDriver": DriverState(packages=ours(), module_version=V)}, **DRIVER)
    assert r.commands == [] and "matches the installed driver" in r.noops[0]


def test_reboot_needed_but_not_allowed_stops_with_message():
    st = DriverState(packages=ours(), module_version="575.57.08")
    r = run(nvidia.reboot_for_driver, {"LinuxDistribution": NOBLE, "NvidiaDriver": st}, reboot=False, **DRIVER)
    assert r.commands == ["refuse: reboot needed: the loaded NVIDIA kernel module is 575.57.08 but 570.153.02 is "
                          "installed; reboot the host and run again (nvidia_driver_reboot is false)"]


def test_reboot_needed_reboots_and_checks_the_module_after():
    before, after = DriverState(packages=ours(), reboot_required=True), DriverState(packages=ours(), module_version=V)
    r = run(nvidia.reboot_for_driver, {"LinuxDistribution": NOBLE, "NvidiaDriver": Reads([before, after])}, **DRIVER)
    assert "( sleep 1 && reboot ) </dev/null >/dev/null 2>&1 &" in r.commands
    assert "call wait_and_reconnect" in r.commands  # pyinfra's server.reboot
    assert not any(c.startswith("refuse:") for c in r.commands)


def test_reboot_that_does_not_load_the_driver_fails():
    before = DriverState(packages=ours(), reboot_required=True)
    r = run(nvidia.reboot_for_driver, {"LinuxDistribution": NOBLE, "NvidiaDriver": Reads([before, before])},
            **DRIVER)
    assert r.commands[-1].startswith("refuse: rebooted, but driver 570.153.02 is installed, no NVIDIA kernel module")


# ---- repositories ------------------------------------------------------------------------------------------

def test_cuda_repo_refuses_unknown_distro():
    r = run(nvidia.cuda_repo, {"LinuxDistribution": ROCKY}, base_url="https://x/repos", keyring_version="1.1-1")
    assert r.commands == ["refuse: NVIDIA's CUDA repository has no directory for rocky-9.4 "
                          "(known: ubuntu-24.04, ubuntu-22.04, debian-12)"]


def test_repo_dirs_and_docker_source():
    assert nvidia.cuda_repo_dir(NOBLE) == "ubuntu2404"
    assert docker.docker_source("https://download.docker.com/linux/", NOBLE) == (
        "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu noble stable")
    assert docker.docker_source("https://download.docker.com/linux", ROCKY) is None


def test_docker_repo_refuses_unknown_distro():
    r = run(docker.docker_repo, {"LinuxDistribution": ROCKY}, base_url="https://download.docker.com/linux")
    assert r.commands[0].startswith("refuse: Docker's repository has no packages for Rocky Linux 9")


# ---- docker daemon.json ------------------------------------------------------------------------------------

OUR_CONFIG = {"log-driver": "json-file", "log-opts": {"max-size": "100m", "max-file": "3"}}
RUNTIME = {"runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}}


def test_merge_keeps_foreign_keys_and_nested_ones():
    current = {"data-root": "/data/docker", "log-opts": {"compress": "true", "max-size": "10m"}, **RUNTIME}
    merged = docker.merge(current, OUR_CONFIG)
    assert merged == {"data-root": "/data/docker", "log-driver": "json-file",
                      "log-opts": {"compress": "true", "max-size": "100m", "max-file": "3"}, **RUNTIME}
    assert current["log-opts"] == {"compress": "true", "max-size": "10m"}  # input untouched


def test_nvidia_runtime_configured_only_when_missing():
    missing = run(docker.nvidia_runtime, {"DockerDaemonJson": DaemonJson()})
    assert missing.commands == ["nvidia-ctk runtime configure --runtime=docker"]
    present = run(docker.nvidia_runtime, {"DockerDaemonJson": DaemonJson(exists=True, data=RUNTIME)})
    assert present.commands == [] and present.noops == ["/etc/docker/daemon.json has runtimes.nvidia"]


def test_daemon_json_already_merged_is_noop():
    dj = DaemonJson(exists=True, data={**RUNTIME, "data-root": "/d", **OUR_CONFIG})
    r = run(docker.daemon_json, {"DockerDaemonJson": dj}, config=OUR_CONFIG)
    assert r.commands == [] and r.noops == ["/etc/docker/daemon.json has log-driver, log-opts"]


def test_daemon_json_invalid_is_refused_not_overwritten():
    r = run(docker.daemon_json, {"DockerDaemonJson": DaemonJson(exists=True, error="x is not valid JSON")},
            config=OUR_CONFIG)
    assert r.commands == ["refuse: x is not valid JSON; fix or remove it"]


def test_daemon_json_writes_merged_file_keeping_foreign_key(monkeypatch):
    written = {}

    def fake_put(src, dest, mode):  # pyinfra's files.put, whose own facts are not the subject here
        written[dest] = json.loads(src.read())
        yield f"upload {dest}"

    def fake_dir(path, mode):
        yield f"mkdir {path}"

    monkeypatch.setattr(docker.files.put, "_inner", fake_put)
    monkeypatch.setattr(docker.files.directory, "_inner", fake_dir)
    dj = DaemonJson(exists=True, data={"data-root": "/data/docker", **RUNTIME})
    r = run(docker.daemon_json, {"DockerDaemonJson": dj}, config=OUR_CONFIG)
    assert r.commands == ["mkdir /etc/docker", "upload /etc/docker/daemon.json"]
    assert written["/etc/docker/daemon.json"] == {"data-root": "/data/docker", **RUNTIME, **OUR_CONFIG}


@pytest.mark.parametrize(("data", "expected"), [
    ({"vllm_tensor_parallel_size": 4}, "vllm_tensor_parallel_size needs 4 GPU(s) but the host has 1 on the PCI bus"),
    ({"vllm_instances": [{"name": "qa", "port": 8000, "gpus": [0]}, {"name": "qb", "port": 8001, "gpus": [1]}]},
     "vllm_instances needs 2 GPU(s) but the host has 1"),
])
def test_preflight_refuses_settings_asking_for_more_gpus_than_the_bus_shows(data, expected):
    from gpu_llm.plan import ServeConfig, gpus_needed
    from gpu_llm.settings import from_data

    def needed(d: dict) -> tuple[int, str]:
        return gpus_needed(ServeConfig.from_settings(from_data(d)))

    r = run(preflight.check, {"Preflight": GOOD}, gpus_needed=needed(data), **ARGS)
    assert len(r.commands) == 1 and expected in r.commands[0]
    assert run(preflight.check, {"Preflight": GOOD}, gpus_needed=needed({}), **ARGS).commands == []


# ---- apt lists of our sources -------------------------------------------------------------------------------

# Lists a real apt (Ubuntu 24.04, a converged testbed host) wrote for these sources: note its "%5f" for "_".
REAL_LISTS = ["archive.ubuntu.com_ubuntu_dists_noble_InRelease",
              "developer.download.nvidia.com_compute_cuda_repos_ubuntu2404_x86%5f64_InRelease",
              "download.docker.com_linux_ubuntu_dists_noble_InRelease",
              "nvidia.github.io_libnvidia-container_stable_deb_amd64_InRelease"]
REAL_SOURCES = {
    "/etc/apt/sources.list.d/cuda-ubuntu2404-x86_64.list": [
        "deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] "
        "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/ /"],
    "/etc/apt/sources.list.d/docker.list": [
        "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu noble stable"],
    "/etc/apt/sources.list.d/nvidia-container-toolkit.list": [
        "deb [signed-by=/etc/apt/keyrings/nvidia-container-toolkit.asc] "
        "https://nvidia.github.io/libnvidia-container/stable/deb/amd64 /"],
}


def test_lists_missing_finds_a_source_apt_has_no_lists_of():
    """A run cut between adding a repository and `apt-get update` leaves the source without lists: found."""
    from opkit import FakeHost
    from pyinfra.context import ctx_host

    from gpu_llm.operations.packages import lists_missing, lists_stem

    assert lists_stem("deb http://user:pw@example.org/debian/ bookworm main") == "example.org_debian_dists_bookworm"
    assert lists_stem("# deb https://x/ /") is None and lists_stem("deb [arch=amd64]") is None
    for lists, missing in [(REAL_LISTS, []),
                           ([n for n in REAL_LISTS if "docker" not in n],
                            REAL_SOURCES["/etc/apt/sources.list.d/docker.list"]),
                           ([n for n in REAL_LISTS if "cuda" not in n],
                            REAL_SOURCES["/etc/apt/sources.list.d/cuda-ubuntu2404-x86_64.list"])]:
        with ctx_host.use(FakeHost({"AptSources": REAL_SOURCES, "AptLists": lists})):
            assert lists_missing() == missing

