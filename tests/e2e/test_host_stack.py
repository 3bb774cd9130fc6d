"""The real deploy.py builds the host stack (preflight, pinned+held driver 570, CUDA, Docker, Container Toolkit).

One converged host serves every check that only reads state; the driver-conflict and no-reboot cases get their
own fresh hosts. Timings are printed ([time] lines) so the CI budget can be followed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.conftest import base_data
from tests.testbed.harness import Host, Testbed
from tests.testbed.images import build_vllm_image, start_fake_hf
from tests.testbed.pyinfra_run import DeployResult

pytestmark = pytest.mark.e2e

DRIVER = "570.172.08"  # gpu_llm.defaults nvidia_driver_version
NEWER_IN_BRANCH = "570.195.03"  # the testbed's CUDA repo offers it: the pin must keep it out
OTHER_DRIVER = "575.57.08"  # another branch in the testbed's CUDA repo
DRIVER_PACKAGES = ("nvidia-driver-570-open", "nvidia-utils-570", "nvidia-dkms-570-open")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CUDA_LIST = "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64"
# A user's own daemon.json: keys gpu-llm does not manage, a runtime of theirs, a log option next to ours
FOREIGN_DAEMON = {"registry-mirrors": ["https://mirror.example"],
                  "runtimes": {"alt": {"path": "/usr/bin/runc"}},
                  "log-opts": {"labels": "team"}}
# What a user sees of "nothing changed": packages, holds, Docker's config, apt's pins, modprobe config
SNAPSHOT = ("sha256sum /var/lib/dpkg/status; apt-mark showhold; "
            "find /etc/docker /etc/apt/preferences.d /etc/apt/apt.conf.d /etc/modprobe.d -type f -print0 "
            "| sort -z | xargs -0 sha256sum")


@dataclass
class Stack:
    """A host the deploy converged, the host data it was given and both runs."""

    host: Host
    data: dict[str, dict]
    boot_before: str
    first: DeployResult
    second: DeployResult


def _ops(res: DeployResult) -> dict[str, tuple[int, int, int]]:
    """Results-table rows by operation name, without the "<deploy name> | " prefix pyinfra puts before it."""
    return {name.split(" | ")[-1]: row for name, row in res.ops.items()}


def _changed(res: DeployResult) -> set[str]:
    return {name for name, (changed, _, _) in _ops(res).items() if changed}


def _sh(host: Host, cmd: str) -> str:
    return host.ssh(cmd, check=True).stdout


def _timed_deploy(deploy: Callable[..., DeployResult], what: str, *args, **kwargs) -> DeployResult:
    res = deploy(*args, **kwargs)
    print(f"[time] host stack: {what}: {res.seconds:.1f}s ({res.changed} changed, rc {res.rc})", flush=True)
    return res


@pytest.fixture(scope="module")
def hf_endpoint(testbed: Testbed) -> str:
    """One fake Hugging Face hub for every host of this module (stopped by the testbed's down())."""
    return start_fake_hf(testbed, 8180, "--shard-mib", "1")


def _host_data(testbed: Testbed, host: Host, hf_endpoint: str, image: bool = True, **extra) -> dict[str, dict]:
    """What test_converge.py gives a host: the stand-in vLLM image imported, the fake hub, the image pinned."""
    from gpu_llm.plan.versions import newest_release_for

    version = newest_release_for((12, 8), 9.0).version  # what the 570 driver's CUDA 12.8 runs on Hopper
    ref = f"vllm/vllm-openai:v{version}"
    if image:
        build_vllm_image(host, ref, version)  # hosts have no registry
    return {host.name: {"hf_endpoint": hf_endpoint, "vllm_image": ref, "vllm_health_timeout": 120, **extra}}


@pytest.fixture(scope="module")
def stack(testbed: Testbed, hf_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A fresh h200-x1 host with a user's daemon.json, deployed twice (the second run with -v for noop lines)."""
    from tests.testbed.pyinfra_run import run_deploy, write_inventory

    t0 = time.monotonic()
    host = testbed.add_host("h200-x1")
    data = _host_data(testbed, host, hf_endpoint)
    host.ssh("mkdir -p /etc/docker && cat > /etc/docker/daemon.json", input=json.dumps(FOREIGN_DAEMON), check=True)
    inv = write_inventory(tmp_path_factory.mktemp("stack") / "inventory.py", [host], data,
                          base_data(testbed))
    boot_before = host.boot_mark()
    first = run_deploy(inv, "deploy.py")
    second = run_deploy(inv, "deploy.py", "-v")
    print(f"[time] host stack: converged host (boot, image, 2 runs): {time.monotonic() - t0:.1f}s", flush=True)
    yield Stack(host, data, boot_before, first, second)


# ---- 1 + 3: a converged host ---------------------------------------------------------------------------------
def test_first_run_converges_through_the_driver_reboot(stack: Stack) -> None:
    first, host = stack.first, stack.host
    assert first.rc == 0 and first.errors == 0, first.output[-4000:]
    assert "Reboot into the installed NVIDIA driver if needed" in _changed(first), first.changed_ops
    assert f"Install NVIDIA driver {DRIVER}" in _changed(first)
    assert host.boot_mark() != stack.boot_before  # the guest's PID 1 is a new one
    assert _sh(host, "cat /run/gpu-llm-testbed/loaded-driver").strip() == DRIVER  # module "loaded" at boot
    smi = _sh(host, "nvidia-smi --query-gpu=name,driver_version --format=csv,noheader")
    assert smi.strip() == f"NVIDIA H200, {DRIVER}", smi
    assert "CUDA Version: 12.8" in _sh(host, "nvidia-smi")


def test_driver_packages_are_held_and_pinned_against_the_newer_release(stack: Stack) -> None:
    host = stack.host
    held = set(_sh(host, "apt-mark showhold").split())
    installed = dict(line.split()[1:] for line in _sh(
        host, "dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\\n' 'nvidia-driver-*' 'nvidia-utils-*' "
              "'nvidia-dkms-*'").splitlines() if line[1:2] == "i")  # "hi": held, installed
    assert {p: installed.get(p) for p in DRIVER_PACKAGES} == {p: f"{DRIVER}-0ubuntu1" for p in DRIVER_PACKAGES}
    assert set(DRIVER_PACKAGES) <= held, held
    for pkg in DRIVER_PACKAGES:
        policy = _sh(host, f"apt-cache policy {pkg}")
        assert f"{NEWER_IN_BRANCH}-0ubuntu1" in policy, policy  # the repo offers the newer one...
        assert re.search(rf"Candidate: {re.escape(DRIVER)}-0ubuntu1\n", policy), policy  # ...the pin wins
    # pin alone (holds lifted in a simulation only): neither upgrade path moves a driver package
    sim_env = "-o APT::Get::Simulate=true -o Debug::NoLocking=1"
    only = _sh(host, f"apt-get {sim_env} install --only-upgrade --allow-change-held-packages {' '.join(DRIVER_PACKAGES)}")
    upgrade = _sh(host, f"apt-get {sim_env} upgrade --allow-change-held-packages")
    for out in (only, upgrade):
        moved = [line for line in out.splitlines() if re.match(r"Inst (lib)?nvidia", line)]
        assert not moved and NEWER_IN_BRANCH not in out, out


def test_unattended_upgrades_and_nouveau_are_kept_away(stack: Stack) -> None:
    host = stack.host
    blacklist = _sh(host, "apt-config dump Unattended-Upgrade::Package-Blacklist")
    for prefix in ("nvidia-", "libnvidia-", "cuda-"):
        assert f'"{prefix}"' in blacklist, blacklist
    modprobe = _sh(host, "modprobe --showconfig")
    assert re.search(r"^blacklist nouveau$", modprobe, re.MULTILINE), "nouveau not blacklisted in modprobe's config"


def test_cuda_toolkit_and_docker_with_the_nvidia_runtime(stack: Stack) -> None:
    host = stack.host
    assert _sh(host, "dpkg-query -W -f='${db:Status-Abbrev}' cuda-toolkit-12-8").startswith("ii")
    assert host.ssh("test -x /usr/local/cuda-12.8/bin/nvcc").returncode == 0
    assert _sh(host, "systemctl is-active docker").strip() == "active"
    assert _sh(host, "dpkg-query -W -f='${db:Status-Abbrev}' docker-ce nvidia-container-toolkit").count("ii") == 2
    daemon = json.loads(_sh(host, "cat /etc/docker/daemon.json"))
    assert daemon["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert daemon["log-driver"] == "json-file"
    assert daemon["default-ulimits"]["memlock"] == {"Name": "memlock", "Hard": -1, "Soft": -1}
    runtimes = json.loads(_sh(host, "docker info --format '{{json .Runtimes}}'"))
    assert "nvidia" in runtimes, runtimes  # the running dockerd read the merged file


def test_a_users_daemon_json_keys_are_kept_and_merged(stack: Stack) -> None:
    host = stack.host
    daemon = json.loads(_sh(host, "cat /etc/docker/daemon.json"))
    assert daemon["registry-mirrors"] == FOREIGN_DAEMON["registry-mirrors"]
    assert daemon["runtimes"]["alt"] == FOREIGN_DAEMON["runtimes"]["alt"]
    assert set(daemon["runtimes"]) == {"alt", "nvidia"}
    assert daemon["log-opts"] == {"labels": "team", "max-size": "100m", "max-file": "3"}
    mirrors = json.loads(_sh(host, "docker info --format '{{json .RegistryConfig.Mirrors}}'"))
    assert mirrors == ["https://mirror.example/"], mirrors  # dockerd was restarted with the merged file


def test_second_run_changes_nothing_and_says_why(stack: Stack) -> None:
    second = stack.second
    assert second.rc == 0 and second.changed == 0, (second.changed_ops, second.output[-3000:])
    noops = [ANSI.sub("", line) for line in second.output.splitlines() if "noop: " in line]
    for reason in ("preflight passed", f"{DRIVER}-0ubuntu1 is installed and held",
                   "/etc/docker/daemon.json has runtimes.nvidia", "running NVIDIA kernel module matches",
                   f"NVIDIA driver: nvidia-driver-570-open {DRIVER}-0ubuntu1 is installed"):
        assert any(reason in line for line in noops), (reason, noops)
    expected = {"Check the host can run gpu-llm", "Add NVIDIA's CUDA repository", f"Install NVIDIA driver {DRIVER}",
                f"Pin NVIDIA driver {DRIVER} in apt preferences", "Reboot into the installed NVIDIA driver if needed",
                "Install CUDA toolkit 12.8", "Install Docker", "Install NVIDIA Container Toolkit",
                "Register the NVIDIA runtime with Docker", "Merge gpu-llm's keys into /etc/docker/daemon.json"}
    assert expected <= set(_ops(second)), sorted(second.ops)
    for name in _ops(second):  # imperative names, not pyinfra's default "module.function ..." ones
        first_word = name.split()[0]
        assert first_word[0].isupper() and not first_word.endswith("ing") and "." not in first_word, name


# ---- 2: a different apt driver ------------------------------------------------------------------------------
def test_other_apt_driver_is_refused_untouched_then_replaced(testbed: Testbed, hf_endpoint: str,
                                                             deploy: Callable[..., DeployResult]) -> None:
    t0 = time.monotonic()
    host = testbed.add_host("h200-x1")
    # what a user who set up NVIDIA's repository by hand and took the 575 driver has
    _sh(host, f"curl -fsSLo /tmp/k.deb {CUDA_LIST}/cuda-keyring_1.1-1_all.deb && dpkg -i /tmp/k.deb && "
              "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nvidia-driver-575-open")
    host.reboot()
    assert OTHER_DRIVER in _sh(host, "nvidia-smi")
    data = _host_data(testbed, host, hf_endpoint)
    print(f"[time] host stack: 575 host ready: {time.monotonic() - t0:.1f}s", flush=True)
    before = _sh(host, SNAPSHOT)

    refused = _timed_deploy(deploy, "575 host, default settings", [host], data)
    assert refused.rc != 0
    assert "nvidia_driver_replace" in refused.output and OTHER_DRIVER in refused.output, refused.output[-3000:]
    # refused by the preflight, before the model download or any driver/apt step
    assert f"refused: the host has NVIDIA driver nvidia-driver-575-open {OTHER_DRIVER}" in refused.output
    assert "Check the host's NVIDIA driver can be kept or replaced" in refused.output
    assert "Start the model download" not in refused.output, refused.output[-3000:]
    assert _sh(host, SNAPSHOT) == before, "the refused run changed packages, holds or config"
    assert OTHER_DRIVER in _sh(host, "nvidia-smi")

    data[host.name]["nvidia_driver_replace"] = True
    boot = host.boot_mark()
    replaced = _timed_deploy(deploy, "575 host, nvidia_driver_replace", [host], data)
    assert replaced.rc == 0 and replaced.errors == 0, replaced.output[-4000:]
    assert "Reboot into the installed NVIDIA driver if needed" in _changed(replaced)
    assert host.boot_mark() != boot
    assert _sh(host, "nvidia-smi --query-gpu=driver_version --format=csv,noheader").strip() == DRIVER
    assert OTHER_DRIVER not in _sh(host, "dpkg-query -W -f='${Version}\\n' 'nvidia*' 'libnvidia*'")
    assert set(DRIVER_PACKAGES) <= set(_sh(host, "apt-mark showhold").split())
    again = _timed_deploy(deploy, "replaced host, re-run", [host], data)
    assert again.rc == 0 and again.changed == 0, again.changed_ops


# ---- 4: no reboot allowed -----------------------------------------------------------------------------------
def test_no_reboot_allowed_stops_with_a_reboot_needed_message(testbed: Testbed, hf_endpoint: str,
                                                             deploy: Callable[..., DeployResult]) -> None:
    host = testbed.add_host("h200-x1")
    data = _host_data(testbed, host, hf_endpoint, image=False, nvidia_driver_reboot=False)
    boot = host.boot_mark()
    res = _timed_deploy(deploy, "fresh host, nvidia_driver_reboot false", [host], data)
    assert res.rc != 0
    assert "reboot needed" in res.output and "nvidia_driver_reboot is false" in res.output, res.output[-3000:]
    assert host.boot_mark() == boot
    assert _sh(host, "cat /var/lib/gpu-llm-testbed/installed-driver").strip() == DRIVER
    assert host.ssh("test -e /run/gpu-llm-testbed/loaded-driver").returncode != 0
    assert "Install Docker" not in res.output, res.output[-3000:]  # the run stopped at the reboot

