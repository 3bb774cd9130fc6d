"""Datacenter GPU servers (issue 12): an HGX H100 host with NVSwitches (fabric manager at the driver's version,
fabric completed before vLLM, persistence mode, repaired when the fabric manager is stopped) and a Secure Boot host
(refused before any change with NVIDIA's unsigned DKMS driver, converged with Ubuntu's signed -server driver)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.conftest import base_data, prepared_host
from tests.testbed.harness import Host, Testbed
from tests.testbed.pyinfra_run import DeployResult, remote_commands, run_deploy, write_inventory

pytestmark = pytest.mark.e2e

DRIVER = "570.172.08"  # gpu_llm.defaults nvidia_driver_version
FM = "nvidia-fabricmanager-570"
UBUNTU_DRIVER = "nvidia-headless-no-dkms-570-server-open"  # what `ubuntu-drivers --gpgpu` installs
# What a user sees of "nothing changed": packages and every file under /etc
UNCHANGED = ("sha256sum /var/lib/dpkg/status; apt-mark showhold; "
             "find /etc -xdev -type f -print0 | sort -z | xargs -0 sha256sum")


def _sh(host: Host, cmd: str) -> str:
    return host.ssh(cmd, check=True).stdout


def _changed(res: DeployResult) -> set[str]:
    return {name.split(" | ")[-1] for name, (changed, _, _) in res.ops.items() if changed}


def _held_version(host: Host, package: str) -> tuple[str, bool]:
    line = _sh(host, f"dpkg-query -W -f='${{db:Status-Abbrev}} ${{Version}}' {package}")
    return line.split()[1], line.startswith("hi")


@dataclass
class Hgx:
    host: Host
    data: dict[str, dict]
    first: DeployResult
    second: DeployResult


@pytest.fixture(scope="module")
def hgx(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hgx]:
    t0 = time.monotonic()
    host, data = prepared_host(testbed, "hgx-h100-x8")
    inv = write_inventory(tmp_path_factory.mktemp("hgx") / "inventory.py", [host], data, base_data(testbed))
    first = run_deploy(inv, "deploy.py")
    second = run_deploy(inv, "deploy.py", "-vv")
    print(f"[time] datacenter: HGX host converged + re-run: {time.monotonic() - t0:.1f}s", flush=True)
    yield Hgx(host, data, first, second)


def test_hgx_converges_with_the_fabric_manager_at_the_driver_version(hgx: Hgx) -> None:
    first, host = hgx.first, hgx.host
    assert first.rc == 0 and first.errors == 0, first.output[-5000:]
    assert {"Install the NVSwitch fabric manager of the driver", "Enable and start the NVSwitch fabric manager",
            "Enable persistence mode (nvidia-persistenced)",
            # the fabric manager changed (installed): restarted so its new binary runs (not on the re-run: 0 changes)
            "Restart the NVSwitch fabric manager after its upgrade"} <= _changed(first), first.changed_ops
    assert _held_version(host, FM) == (f"{DRIVER}-1", True)  # the driver's release, held with it
    assert re.search(rf"Candidate: {re.escape(DRIVER)}-1\n", _sh(host, f"apt-cache policy {FM}"))  # pinned
    assert _sh(host, "systemctl is-active nvidia-fabricmanager nvidia-persistenced").split() == ["active", "active"]
    assert _sh(host, "systemctl is-enabled nvidia-fabricmanager nvidia-persistenced").split() == ["enabled", "enabled"]
    fabric = _sh(host, "nvidia-smi --query-gpu=fabric.state,fabric.status --format=csv,noheader").splitlines()
    assert fabric == ["Completed, Success"] * 8, fabric
    # persistence mode really on: the stand-in unit is Ubuntu's (static, --no-persistence-mode), the drop-in turns it on
    pm = _sh(host, "nvidia-smi --query-gpu=persistence_mode --format=csv,noheader").split()
    assert pm == ["Enabled"] * 8, pm
    assert "NV18" in _sh(host, "nvidia-smi topo -m")
    assert "verified" in first.output, first.output[-3000:]  # vllm_verify: /health and a chat completion
    assert "Error 802" not in _sh(host, "docker logs $(docker ps -q | head -n 1) 2>&1")


def test_hgx_second_run_changes_nothing(hgx: Hgx) -> None:
    second = hgx.second
    assert second.rc == 0 and second.changed == 0, (second.changed_ops, second.output[-3000:])
    assert "fabric completed on all 8 GPUs" in second.output
    assert f"{FM} {DRIVER}-1 is installed and held" in second.output
    # the fabric state comes from the one snapshot command: no extra remote command on a no-op run
    commands = remote_commands(second.output)[hgx.host.ip]
    assert len(commands) <= 4, commands


def test_stopped_fabric_manager_breaks_cuda_and_is_repaired(hgx: Hgx, deploy: Callable[..., DeployResult]) -> None:
    host = hgx.host
    _sh(host, "systemctl stop nvidia-fabricmanager")
    fabric = _sh(host, "nvidia-smi --query-gpu=fabric.state --format=csv,noheader").split("\n")[0]
    assert fabric != "Completed"
    name = _sh(host, "docker ps --format '{{.Names}}' | head -n 1").strip()
    host.ssh(f"docker restart {name}", timeout=120)
    deadline = time.monotonic() + 60
    logs = ""
    while time.monotonic() < deadline and "Error 802" not in logs:  # the stand-in vLLM cannot start CUDA
        time.sleep(1)
        logs = host.ssh(f"docker logs --tail 20 {name} 2>&1").stdout
    assert "Error 802: system not yet initialized" in logs, logs

    repaired = deploy([host], hgx.data)
    assert repaired.rc == 0 and repaired.errors == 0, repaired.output[-4000:]
    assert "Enable and start the NVSwitch fabric manager" in _changed(repaired), repaired.changed_ops
    assert _sh(host, "systemctl is-active nvidia-fabricmanager").strip() == "active"
    assert _sh(host, "nvidia-smi --query-gpu=fabric.state --format=csv,noheader").split().count("Completed") == 8
    assert "verified" in repaired.output, repaired.output[-3000:]


def test_secure_boot_host_refused_with_nvidia_source_then_converges_with_ubuntu(
        testbed: Testbed, deploy: Callable[..., DeployResult]) -> None:
    t0 = time.monotonic()
    host, data = prepared_host(testbed, "h100-x1", secure_boot=True)
    assert _sh(host, "mokutil --sb-state").strip() == "SecureBoot enabled"
    before = _sh(host, UNCHANGED)

    refused = deploy([host], data)
    assert refused.rc != 0
    assert "refused: Secure Boot is enabled" in refused.output, refused.output[-3000:]
    assert "nvidia_driver_source: ubuntu" in refused.output and "nvidia_driver_source allows nvidia, ubuntu" in \
        refused.output
    assert "Start the model download" not in refused.output  # refused by the preflight
    assert _sh(host, UNCHANGED) == before, "the refused run changed packages, holds or /etc"
    print(f"[time] datacenter: Secure Boot host refused: {time.monotonic() - t0:.1f}s", flush=True)

    # a 570 version the archive has only as a transitional package pulling 580: refused, saying so
    data[host.name].update(nvidia_driver_source="ubuntu", nvidia_driver_version="570.211.01")
    transitional = deploy([host], data)
    assert transitional.rc != 0
    assert "transitional package that installs nvidia-headless-no-dkms-580-server-open" in transitional.output, \
        transitional.output[-3000:]
    assert host.ssh("dpkg-query -W 'nvidia-driver-*' 2>/dev/null | grep -q .").returncode != 0  # nothing installed

    data[host.name]["nvidia_driver_version"] = DRIVER
    converged = deploy([host], data)
    assert converged.rc == 0 and converged.errors == 0, converged.output[-5000:]
    assert _held_version(host, UBUNTU_DRIVER) == (f"{DRIVER}-0ubuntu0.24.04.1", True)
    assert _held_version(host, "nvidia-utils-570-server") == (f"{DRIVER}-0ubuntu0.24.04.1", True)  # nvidia-smi
    kernel = _sh(host, "uname -r").strip()
    assert _sh(host, f"dpkg-query -W -f='${{db:Status-Abbrev}}' linux-modules-nvidia-570-server-open-{kernel}"
               ).startswith("ii")
    assert _sh(host, "cat /run/gpu-llm-testbed/loaded-driver").strip() == DRIVER  # the signed module loaded
    # no DKMS build: the stand-in nvidia-driver-570-server-open depends on nvidia-dkms-570-server-open as the real one
    dkms = _sh(host, "dpkg-query -W -f='${db:Status-Abbrev} ${Package}\\n' 'nvidia-dkms-*' 'nvidia-driver-*' || true")
    assert not [line for line in dkms.splitlines() if line[1:2] == "i"], dkms  # installed (held or not)
    assert _sh(host, "systemctl is-active nvidia-persistenced").strip() == "active"
    assert _sh(host, "nvidia-smi --query-gpu=persistence_mode --format=csv,noheader").split() == ["Enabled"]
    assert "verified" in converged.output

    again = deploy([host], data)
    assert again.rc == 0 and again.changed == 0, again.changed_ops
    print(f"[time] datacenter: Secure Boot host, ubuntu source, 3 runs: {time.monotonic() - t0:.1f}s", flush=True)


def test_secure_boot_testbed_host_rejects_nvidias_unsigned_dkms_module(testbed: Testbed) -> None:
    """The stand-in behaves as a Secure Boot host: NVIDIA's DKMS driver installed by hand does not load after the
    reboot (what the preflight refusal above prevents)."""
    host = testbed.add_host("h100-x1", secure_boot=True)
    cuda = "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64"
    _sh(host, f"curl -fsSLo /tmp/k.deb {cuda}/cuda-keyring_1.1-1_all.deb && dpkg -i /tmp/k.deb && apt-get update -q "
              "&& DEBIAN_FRONTEND=noninteractive apt-get install -y -q " + " ".join(
                  f"{p}={DRIVER}-0ubuntu1" for p in ("nvidia-driver-570-open", "nvidia-utils-570",
                                                     "nvidia-dkms-570-open", "nvidia-compute-utils-570")))
    host.reboot()
    smi = host.ssh("nvidia-smi")
    assert smi.returncode == 9 and "couldn't communicate with the NVIDIA driver" in smi.stdout, smi.stdout
    journal = _sh(host, "journalctl -b -u gpu-llm-testbed-nvidia-module --no-pager")
    assert "Key was rejected by service" in journal, journal
