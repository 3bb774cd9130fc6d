"""Faults during real deploy.py runs: disk too small, a vendor repo unreachable, SSH dropped and a reboot mid-run.

One fresh host for the module, and the tests run in file order on it (each starts from the state the previous
one left): preflight refuses a too-small model_dir before any change; with Docker's repo broken the run fails
naming the URL and leaves nothing half-installed or half-held; the SSH sessions are killed while Docker
installs, and the re-run completes; a dpkg run left interrupted is finished by the next deploy; the host reboots while a run waits for the (re)started container's
/health, and the re-run completes; the run after that changes nothing; the host reboots while the model
download runs over a slow link, and the re-run continues every shard from its partial file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from gpu_llm.remote.download import PARTIAL_DIR, RESUME_CHUNK
from tests.e2e.conftest import base_data, prepared_host
from tests.testbed.config import PROJECT
from tests.testbed.harness import Host, Testbed
from tests.testbed.images import start_fake_hf
from tests.testbed.pyinfra_run import (
    PYINFRA,
    DeployResult,
    parse_results,
    run_deploy,
    write_inventory,
)

pytestmark = pytest.mark.e2e

MODEL_DIR = "/home/llm/model/qwen/Qwen3-32B-AWQ"
SMALL = "/srv/gpu-llm-small"
SNAPSHOT = ("sha256sum /var/lib/dpkg/status; find /etc -xdev -printf '%p %y %m %U %s\\n' | sort; "
            "find /etc -xdev -type f -print0 | sort -z | xargs -0 sha256sum; "
            "docker ps -a --no-trunc --format '{{.ID}} {{.Names}} {{.State}}'; "
            "docker images --no-trunc --format '{{.ID}} {{.Repository}}:{{.Tag}}'; "
            "ls -A /home /opt /var/log")


@dataclass
class Faulty:
    host: Host
    data: dict[str, dict]
    inventory: Callable[[dict], Path]  # host data overrides -> inventory path


@pytest.fixture(scope="module")
def faulty(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    host, prepared = prepared_host(testbed, "h200-x1")
    data = prepared[host.name]
    tmp = tmp_path_factory.mktemp("faults")

    def inventory(overrides: dict) -> Path:
        return write_inventory(tmp / "inventory.py", [host], {host.name: {**data, **overrides}},
                               base_data(testbed))

    yield Faulty(host, {host.name: data}, inventory)
    testbed.restore_repos()


def run_with_fault(inventory: Path, op_name: str, fault: Callable[[], object], delay: float) -> tuple[DeployResult, bool]:
    """Run pyinfra; `delay` s after operation `op_name` starts, call `fault` (in a thread). Returns (result, fired)."""
    t0 = time.monotonic()
    proc = subprocess.Popen([str(PYINFRA), "-y", str(inventory), "deploy.py"], cwd=PROJECT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    lines, injector = [], None
    for line in proc.stdout:
        lines.append(line)
        if injector is None and "Starting operation" in line and op_name in line:
            injector = threading.Thread(target=lambda: (time.sleep(delay), fault()))
            injector.start()
    rc = proc.wait(timeout=600)
    if injector is not None:
        injector.join(timeout=300)
    output = "".join(lines)
    ops, changed, errors = parse_results(output)
    print(f"[time] pyinfra deploy.py with a fault at {op_name!r}: {time.monotonic() - t0:.1f}s (rc {rc})", flush=True)
    return DeployResult(rc, output, time.monotonic() - t0, ops, changed, errors), injector is not None


def dpkg_clean(host: Host) -> None:
    """No package half-installed or half-configured, and every held package fully installed."""
    audit = host.ssh("dpkg --audit").stdout
    assert not audit.strip(), f"dpkg --audit: {audit}"
    held = host.ssh("apt-mark showhold").stdout.split()
    if held:
        status = host.ssh("dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' " + " ".join(held)).stdout
        assert all(line.split()[1] == "hi" for line in status.splitlines()), status


def test_disk_too_small_refused_before_any_change(faulty: Faulty) -> None:
    host = faulty.host
    assert host.ssh(f"mkdir -p {SMALL} && mount -t tmpfs -o size=64m tmpfs {SMALL}").returncode == 0
    try:
        before = host.ssh(SNAPSHOT).stdout
        res = run_deploy(faulty.inventory({"model_dir": f"{SMALL}/model"}), "deploy.py")
        after = host.ssh(SNAPSHOT).stdout
    finally:
        host.ssh(f"umount {SMALL}")
    assert res.rc != 0, res.output[-3000:]
    m = re.search(rf"(\d+\.\d) GiB free on {SMALL} \(holding {SMALL}\), (\d+\.\d) GiB needed", res.output)
    assert m and float(m[1]) < float(m[2]), res.output[-3000:]
    assert before == after, "\n".join(set(before.splitlines()) ^ set(after.splitlines()))[:3000]


def test_vendor_repo_unreachable_names_the_url_and_leaves_nothing_half_installed(faulty: Faulty,
                                                                                 testbed: Testbed) -> None:
    testbed.break_repo("docker")
    try:
        res = run_deploy(faulty.inventory({}), "deploy.py")
    finally:
        testbed.restore_repos()
    assert res.rc != 0, res.output[-3000:]
    assert re.search(r"cannot download https://download\.docker\.com/linux/ubuntu/gpg .*docker_repo_url", res.output), \
        res.output[-3000:]
    dpkg_clean(faulty.host)
    assert faulty.host.ssh("dpkg -s docker-ce").returncode != 0


def test_ssh_dropped_mid_run_then_rerun_completes(faulty: Faulty) -> None:
    host = faulty.host

    def drop() -> None:  # every ssh session on the host, pyinfra's (and this one's) included
        host.ssh("pkill -f 'sshd:.*@notty'", timeout=30)

    cut, fired = run_with_fault(faulty.inventory({}), "Install Docker", drop, delay=1.0)
    assert fired, cut.output[-3000:]
    assert cut.rc != 0, "the run survived its SSH sessions being killed: the fault did not hit\n" + cut.output[-3000:]
    rerun = run_deploy(faulty.inventory({}), "deploy.py")
    assert rerun.rc == 0 and rerun.errors == 0, rerun.output[-4000:]
    dpkg_clean(host)


def test_interrupted_dpkg_run_is_finished_before_apt_is_used(faulty: Faulty) -> None:
    host = faulty.host
    # what a dpkg killed mid-install leaves (a numbered file in its update journal), with a package to reinstall
    host.ssh("apt-get remove -y cuda-toolkit-12-8 && touch /var/lib/dpkg/updates/0000", check=True)
    refused = host.ssh("apt-get install -y cuda-toolkit-12-8")
    assert refused.returncode != 0 and "dpkg was interrupted" in refused.stdout + refused.stderr, refused
    res = run_deploy(faulty.inventory({}), "deploy.py")
    assert res.rc == 0 and res.errors == 0, res.output[-4000:]
    assert {"Check the host (preflight) | Finish an interrupted dpkg run",
            "Install the NVIDIA driver and CUDA | Install CUDA toolkit 12.8"} <= set(res.changed_ops), res.changed_ops
    assert host.ssh("ls -A /var/lib/dpkg/updates", check=True).stdout.strip() == ""
    dpkg_clean(host)


def test_reboot_mid_deploy_then_rerun_completes(faulty: Faulty) -> None:
    host = faulty.host
    # a new container environment recreates the container, and the stand-in opens its port only after 15 s:
    # the run is certainly in the middle of waiting for /health when the host reboots
    slow = faulty.inventory({"vllm_env": {"FAKE_VLLM_START_DELAY": "15"}})
    before = host.boot_mark()
    cut, fired = run_with_fault(slow, "Verify every vLLM endpoint", host.reboot, delay=2.0)
    assert fired and host.boot_mark() != before, cut.output[-3000:]
    assert cut.rc != 0, "the run finished before the reboot: the fault did not hit\n" + cut.output[-3000:]
    rerun = run_deploy(slow, "deploy.py")
    assert rerun.rc == 0 and rerun.errors == 0, rerun.output[-4000:]
    dpkg_clean(host)
    after = run_deploy(slow, "deploy.py")
    assert after.rc == 0 and after.changed == 0, after.changed_ops or after.output[-4000:]


def test_reboot_mid_download_then_rerun_resumes_every_shard(faulty: Faulty, testbed: Testbed) -> None:
    """The host reboots while the model download unit is fetching shards over a slow link; the re-run continues
    every shard from the bytes its .part file kept (hf_transfer "resumable", the default)."""
    host = faulty.host
    port = 8390 + host.n
    hub_log = testbed.cfg.state / f"fake-hf-{port}.requests.jsonl"
    hub_log.unlink(missing_ok=True)
    # 4 shards of 3 MiB at 192 KiB/s each: about 16 s of transfer, started right after preflight
    endpoint = start_fake_hf(testbed, port, "--shard-mib", "3", "--rate-kib", "192", "--log", str(hub_log))
    # a complete snapshot of "main" is trusted without asking the hub: pin the new hub's commit to move to it
    commit = requests.get(f"{endpoint}/api/models/Qwen/Qwen3-32B-AWQ", timeout=10).json()["sha"]
    inventory = faulty.inventory({"hf_endpoint": endpoint, "model_revision": commit})
    parts = f"{MODEL_DIR}/{PARTIAL_DIR}"

    def reboot_once_parts_grow() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every shard has kept at least one whole read
            sizes = host.ssh(f"stat -c %s {parts}/*.part 2>/dev/null").stdout.split()
            if len(sizes) >= 4 and all(int(s) >= RESUME_CHUNK for s in sizes):
                host.reboot()
                return
            time.sleep(0.2)

    before = host.boot_mark()
    cut, fired = run_with_fault(inventory, "Start downloading the model", reboot_once_parts_grow, delay=0)
    assert fired and host.boot_mark() != before, cut.output[-3000:]
    assert cut.rc != 0, "the run finished before the reboot: the fault did not hit\n" + cut.output[-3000:]
    kept = {}
    for line in host.ssh(f"cd {parts} && stat -c '%n %s' *.part", check=True).stdout.splitlines():
        name, size = line.split()
        kept[name.removesuffix(".part")] = int(size)
    assert len(kept) >= 4 and all(size >= RESUME_CHUNK for size in kept.values()), kept
    logged = len(hub_log.read_text().splitlines())

    rerun = run_deploy(inventory, "deploy.py")
    assert rerun.rc == 0 and rerun.errors == 0, rerun.output[-4000:]
    info = requests.get(f"{endpoint}/api/models/Qwen/Qwen3-32B-AWQ?blobs=true", timeout=10).json()
    name_of = {s["lfs"]["sha256"]: s["rfilename"] for s in info["siblings"] if s.get("lfs")}
    resumed = [json.loads(line) for line in hub_log.read_text().splitlines()[logged:]]
    first_get = {}
    for r in resumed:
        if r["method"] == "GET" and "/resolve/" in r["path"]:
            first_get.setdefault(r["path"].rsplit("/", 1)[-1], r)
    for sha, size in kept.items():
        r = first_get[name_of[sha]]
        assert (r["range"], r["status"]) == (f"bytes={size}-", 206), (name_of[sha], size, r)
    manifest = json.loads(host.ssh(f"cat {MODEL_DIR}/.gpu-llm-manifest.json", check=True).stdout)
    assert manifest["commit"] == info["sha"] == commit
    assert host.ssh(f"ls -A {parts}", check=True).stdout.strip() == ""  # verified: no part left
    again = run_deploy(inventory, "deploy.py")
    assert again.rc == 0 and again.changed == 0, again.changed_ops or again.output[-4000:]
