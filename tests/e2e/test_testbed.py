"""The testbed itself: hosts boot, fake GPUs and vendor repos behave as documented, reboots and tear-down work."""

from __future__ import annotations

import json

import pytest

from tests.testbed.harness import Testbed
from tests.testbed.images import build_vllm_image
from tests.testbed.pyinfra_run import run_deploy, write_inventory

pytestmark = pytest.mark.e2e
SMOKE = "tests/testbed/smoke/deploy.py"


def test_hosts_run_systemd_sshd_and_docker(testbed: Testbed) -> None:
    for h in testbed.hosts:
        res = h.ssh("hostname; . /etc/os-release; echo $VERSION_ID; systemctl is-active ssh docker; ip route")
        lines = res.stdout.split()
        assert lines[:4] == [h.name, "24.04", "active", "active"], res.stdout
        assert "default" not in res.stdout  # no route out


def test_pci_view_shows_the_fixture_gpus_before_any_driver(testbed: Testbed) -> None:
    for h in testbed.hosts:
        devices = sorted(h.gpus + h.nvswitches, key=lambda d: d["pci_bus_id"])  # lspci lists them in bus order
        out = h.ssh("lspci -nn -d 10de:", check=True).stdout.splitlines()
        assert len(out) == len(devices)
        for line, dev in zip(out, devices):
            assert f"[10de:{dev['pci_device_id'][2:]}]" in line
        ids = h.ssh("cat /sys/bus/pci/devices/*/vendor").stdout.split().count("0x10de")
        assert ids == len(devices)
        assert json.loads(h.ssh("cat /etc/gpu-llm-testbed/gpus.json").stdout) == h.gpus


def test_driver_lifecycle_no_module_then_loaded_then_mismatch(testbed: Testbed) -> None:
    h = testbed.add_host("a100-40g-x8")
    inv = write_inventory(testbed.cfg.state / f"inv-{h.name}.py", [h])
    first = run_deploy(inv, SMOKE)
    assert first.rc == 0 and first.errors == 0, first.output[-3000:]
    assert "Reboot to load the new driver" in first.changed_ops  # pyinfra's server.reboot came back
    q = h.ssh("nvidia-smi --query-gpu=index,name,memory.total,compute_cap,driver_version --format=csv,noheader")
    assert q.returncode == 0 and len(q.stdout.splitlines()) == 8, q.stdout
    assert q.stdout.splitlines()[7] == "7, NVIDIA A100-SXM4-40GB, 40960 MiB, 8.0, 570.153.02"
    again = run_deploy(inv, SMOKE)
    assert again.rc == 0 and again.changed == 0, again.changed_ops
    # a newer driver installed without a reboot: library and module differ, as on a real host
    h.ssh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades "
          "nvidia-driver-570-open=570.172.08-0ubuntu1 nvidia-utils-570=570.172.08-0ubuntu1 "
          "nvidia-dkms-570-open=570.172.08-0ubuntu1 nvidia-compute-utils-570=570.172.08-0ubuntu1", check=True)
    mismatch = h.ssh("nvidia-smi")
    assert mismatch.returncode == 18 and "Driver/library version mismatch" in mismatch.stdout
    h.reboot()
    assert "570.172.08" in h.ssh("nvidia-smi", check=True).stdout


def test_reboot_restarts_the_guest(testbed: Testbed) -> None:
    h = testbed.hosts[0]
    before = h.boot_mark()
    h.reboot()
    assert h.boot_mark() != before
    assert float(h.ssh("cut -d' ' -f1 /proc/uptime").stdout) < 120  # the guest's own clock restarted


def test_broken_repo_answers_404_until_restored(testbed: Testbed) -> None:
    h = testbed.hosts[0]
    url = "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/Packages"
    assert h.ssh(f"curl -fsS -o /dev/null {url}").returncode == 0
    testbed.break_repo("cuda")
    try:
        assert h.ssh(f"curl -fsS -o /dev/null -w '%{{http_code}}' {url}").returncode == 22
    finally:
        testbed.restore_repos()
    assert h.ssh(f"curl -fsS -o /dev/null {url}").returncode == 0


def test_offline_hosts_pip_install_from_the_wheel_dir(testbed: Testbed) -> None:
    h = testbed.hosts[0]
    args = " ".join(testbed.pip_args)
    res = h.ssh(f"python3 -m venv /tmp/v && /tmp/v/bin/pip install -q {args} 'huggingface-hub>=1.0,<3' requests "
                "&& /tmp/v/bin/python -c 'import huggingface_hub, requests; print(huggingface_hub.__version__)'")
    assert res.returncode == 0, res.stderr[-2000:]


def test_ubuntu_archive_standin_serves_real_noble_packages(testbed: Testbed) -> None:
    """apt on an offline host installs a real Ubuntu package (and the dependency its rootfs lacks) from the archive
    stand-in at archive.ubuntu.com, checked against the key named in ubuntu.sources; a broken signature fails."""
    h = testbed.hosts[-1]
    res = h.ssh("apt-get update -q && apt-cache policy haproxy liblua5.4-0 && DEBIAN_FRONTEND=noninteractive "
                "apt-get install -y -q --no-install-recommends haproxy && haproxy -v", timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-2000:]
    assert "http://archive.ubuntu.com/ubuntu noble/main amd64 Packages" in res.stdout
    assert "HAProxy version 2.8" in res.stdout
    assert h.ssh("dpkg-query -W -f='${Status}' liblua5.4-0").stdout == "install ok installed"
    h.ssh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q haproxy liblua5.4-0", check=True)
    # the suite is signed by the testbed key only: apt refuses it with Ubuntu's real keyring
    res = h.ssh("echo 'deb [signed-by=/usr/share/keyrings/ubuntu-archive-keyring.gpg] "
                "http://archive.ubuntu.com/ubuntu noble main' > /tmp/real-key.list && apt-get update "
                "-o Dir::Etc::sourcelist=/tmp/real-key.list -o Dir::Etc::sourceparts=/nonexistent")
    assert "NO_PUBKEY" in res.stdout + res.stderr or "not signed" in res.stdout + res.stderr, res.stdout + res.stderr


def test_standin_vllm_image_runs_with_gpus(testbed: Testbed) -> None:
    from gpu_llm.plan.versions import newest_release_for

    h = testbed.hosts[0]
    if h.ssh("command -v nvidia-container-runtime-hook").returncode != 0:
        inv = write_inventory(testbed.cfg.state / f"inv-{h.name}.py", [h])
        assert run_deploy(inv, SMOKE).rc == 0
    version = newest_release_for((12, 8), 9.0).version
    build_vllm_image(h, f"vllm/vllm-openai:v{version}", version)
    res = h.ssh(f"docker run --rm --gpus all --entrypoint python3 vllm/vllm-openai:v{version} -c "
                "\"import json, jinja2; print(len(json.load(open('/standin/flags.json'))))\"")
    assert res.returncode == 0 and int(res.stdout) > 50, res.stderr
    entry = h.ssh(f"docker image inspect -f '{{{{json .Config.Entrypoint}}}}' vllm/vllm-openai:v{version}").stdout
    assert json.loads(entry) == ["python3", "/standin/fake_vllm.py"]
