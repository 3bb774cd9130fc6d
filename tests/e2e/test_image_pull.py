"""First converge: the vLLM image pull runs in the background beside the model download, and is joined before
the container starts.

Two fresh hosts whose image is only in the testbed's registry (Docker Hub's stand-in at registry-1.docker.io,
rate limited for all guests together) and whose model comes from their own fake hub (rate limited per GET), each
converged from scratch in turn with the same limits: host A with deploy.py, host B with a copy of deploy.py without
image_pull_start()/image_pull_wait() (the previous behaviour: `docker pull` when the container is created). On A
the registry sends the image while the hub sends the shards (the guests' journal and both servers' logs say when),
the container runs the pulled image, and a re-run changes nothing; on B the two transfers follow each other. Both
wall times and their ratio are printed (no threshold). Then, on host A, with the registry stopped, a deploy that
needs another image fails naming it and the pull log; and with that image pushed, the host reboots while the deploy
waits for its pull, and the re-run pulls it again and runs it. Run alone:
GPU_LLM_TESTBED_ID=4 .venv/bin/python -m pytest -m e2e tests/e2e/test_image_pull.py -s -q
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpu_llm.deploys.image import LOG_FILE, UNIT
from gpu_llm.layout import DOWNLOAD_UNIT
from tests.e2e.conftest import base_data, prepared_host
from tests.e2e.test_faults import run_with_fault
from tests.testbed import registry
from tests.testbed.config import PROJECT
from tests.testbed.harness import Host, Testbed
from tests.testbed.images import PushedImage, push_vllm_image
from tests.testbed.pyinfra_run import DeployResult, run_deploy, write_inventory

pytestmark = pytest.mark.e2e

IMAGE = "vllm/vllm-openai:v0.11.0"  # what the planner picks for the h200-x1 fixture with the 570 driver
OTHER_IMAGE = "vllm/vllm-openai:v0.10.2"  # also runs there; never pushed
# The registry sends the 64 MiB layer at 1 MiB/s (about 64 s); the hub sends 4 shards of 32 MiB at 256 KiB/s each
# (4 GETs at once: 1 MiB/s, about 128 s). Model : image = 2 : 1, as Qwen3-32B-AWQ (19 GB) : vllm-openai (10 GB).
REGISTRY_KIB = 1024
SHARD_MIB = 32
HUB_KIB = 256
NEW_OPS = ("image_pull_start", "image_pull_wait")


@dataclass
class Converge:
    """One fresh host's first deploy and what the servers and the guest logged about its two downloads."""

    host: Host
    data: dict
    inventory: Path
    result: DeployResult
    hub_log: Path
    pull: list[tuple[float, float]]  # registry -> guest: seconds with bytes sent (epoch, from the proxy's log)
    shards: list[tuple[float, float]]  # hub -> guest: GET of each weight shard (epoch, start and end)
    pull_unit: list[tuple[float, float]]  # the guest's journal: gpu-llm-image-pull.service runs
    model_unit: list[tuple[float, float]]  # the guest's journal: gpu-llm-model-download.service runs

    @property
    def overlap_s(self) -> float:
        """Seconds during which the registry sent image bytes AND the hub sent shard bytes to this host."""
        return overlap(self.pull, self.shards)


# ---- intervals --------------------------------------------------------------------------------------------------


def union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def overlap(xs: list[tuple[float, float]], ys: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(b, d) - max(a, c)) for a, b in union(xs) for c, d in union(ys))


def span(intervals: list[tuple[float, float]]) -> tuple[float, float]:
    return min(a for a, _ in intervals), max(b for _, b in intervals)


def registry_sends(testbed: Testbed, peer: str, since: float) -> list[tuple[float, float]]:
    """When the registry's proxy sent bytes to `peer` (rate_proxy.py's "bytes" events: about one a second)."""
    events = [json.loads(line) for line in registry.proxy_log(testbed.cfg).read_text().splitlines()]
    conns = {e["conn"] for e in events if e["event"] == "open" and e.get("peer") == peer and e["t"] >= since}
    return [(e["from"], e["t"]) for e in events if e["event"] == "bytes" and e["conn"] in conns and e["t"] >= since]


def shard_gets(hub_log: Path) -> list[tuple[float, float]]:
    entries = [json.loads(line) for line in hub_log.read_text().splitlines()]
    return [(e["time"], e["end"]) for e in entries
            if e["method"] == "GET" and e["path"].endswith(".safetensors") and e.get("bytes")]


def unit_runs(host: Host, unit: str) -> list[tuple[float, float]]:
    """When the guest's systemd started `unit` and when each run ended (journal timestamps, all boots)."""
    out = host.ssh(f"journalctl -o json --no-pager -u {unit}", check=True).stdout
    runs, start = [], None
    for line in out.splitlines():
        e = json.loads(line)
        t, msg = int(e["__REALTIME_TIMESTAMP"]) / 1e6, str(e.get("MESSAGE", ""))
        if msg.startswith("Started ") and start is None:
            start = t
        elif start is not None and ("Deactivated successfully" in msg or "Failed with result" in msg):
            runs.append((start, t))
            start = None
    return runs


# ---- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pushed(testbed: Testbed) -> Iterator[PushedImage]:
    """The stand-in image in the registry (and nowhere else), the registry sending at REGISTRY_KIB KiB/s."""
    testbed.start_registry(REGISTRY_KIB)
    image = push_vllm_image(testbed, IMAGE, IMAGE.rsplit(":v", 1)[1])
    print(f"[image-pull] registry: {IMAGE} layer {image.layer_bytes / 2**20:.1f} MiB at {REGISTRY_KIB} KiB/s; hub: "
          f"4 shards x {SHARD_MIB} MiB at {HUB_KIB} KiB/s per GET", flush=True)
    yield image
    testbed.start_registry(None)  # running again (a test stops it) and unlimited for whatever runs next


def fresh_converge(testbed: Testbed, tmp: Path, deploy_file: Path) -> Converge:
    hub_log = tmp / "hub.jsonl"
    host, data = prepared_host(testbed, "h200-x1", "--shard-mib", str(SHARD_MIB), "--rate-kib", str(HUB_KIB),
                               "--log", str(hub_log), image_from_registry=True)
    inventory = write_inventory(tmp / "inventory.py", [host], data, base_data(testbed))
    assert host.ssh(f"docker image inspect {IMAGE}").returncode != 0, "the host must pull the image itself"
    since = host.ssh("date +%s.%N", check=True).stdout.strip()
    result = run_deploy(inventory, deploy_file)
    assert result.rc == 0 and result.errors == 0, result.output[-5000:]
    return Converge(host, data, inventory, result, hub_log,
                    pull=registry_sends(testbed, host.ip, float(since)), shards=shard_gets(hub_log),
                    pull_unit=unit_runs(host, UNIT), model_unit=unit_runs(host, DOWNLOAD_UNIT))


@pytest.fixture(scope="module")
def with_background_pull(testbed: Testbed, pushed: PushedImage,
                         tmp_path_factory: pytest.TempPathFactory) -> Converge:
    return fresh_converge(testbed, tmp_path_factory.mktemp("background-pull"), PROJECT / "deploy.py")


@pytest.fixture(scope="module")
def with_pull_at_container_start(testbed: Testbed, pushed: PushedImage, with_background_pull: Converge,
                                 tmp_path_factory: pytest.TempPathFactory) -> Converge:
    """The previous behaviour: deploy.py without the two image_pull deploys (runs after host A's converge)."""
    tmp = tmp_path_factory.mktemp("pull-at-container-start")
    lines = (PROJECT / "deploy.py").read_text().splitlines(keepends=True)
    old = tmp / "deploy_without_image_pull.py"
    old.write_text("".join(line for line in lines if not any(op in line for op in NEW_OPS)))
    return fresh_converge(testbed, tmp, old)


def _timeline(c: Converge) -> str:
    t0 = min(a for a, _ in c.model_unit)

    def rel(intervals: list[tuple[float, float]]) -> str:
        return ", ".join(f"{a - t0:.0f}-{b - t0:.0f}s" for a, b in union(intervals)) or "none"

    return (f"model unit {rel(c.model_unit)} | shard GETs {rel(c.shards)} | pull unit {rel(c.pull_unit)} | "
            f"registry sending {rel(c.pull)} | both sending {c.overlap_s:.0f}s")


# ---- tests ------------------------------------------------------------------------------------------------------


def test_pull_overlaps_model_download_and_container_runs_pulled_image(with_background_pull: Converge,
                                                                      pushed: PushedImage) -> None:
    c = with_background_pull
    print(f"[image-pull] background pull, {c.host.name}: {_timeline(c)}", flush=True)
    assert "Start the vLLM image pull | Start pulling the vLLM image in the background" in c.result.changed_ops
    # the guest's journal: the pull unit ran while the (re)started model download unit ran
    assert c.pull_unit and c.model_unit, (c.pull_unit, c.model_unit)
    pull_s = sum(b - a for a, b in union(c.pull_unit))
    assert overlap(c.pull_unit, c.model_unit) >= 0.8 * pull_s, _timeline(c)
    # the servers' logs: the registry sent the layer while the hub sent shards, for most of the layer's transfer
    assert c.pull and c.shards, (c.pull, c.shards)
    sent_s = sum(b - a for a, b in union(c.pull))
    assert sent_s >= 0.5 * pushed.layer_bytes / (REGISTRY_KIB * 1024), f"the pull was not rate limited: {sent_s:.0f}s"
    assert c.overlap_s >= 0.7 * sent_s, _timeline(c)
    # the container runs the image the registry served (its id is the pushed config's digest)
    names = c.host.ssh("docker ps --filter label=gpu-llm.managed=true --format '{{.Names}}'", check=True).stdout.split()
    assert names, "no vLLM container runs"
    for name in names:
        assert c.host.ssh(f"docker inspect --format '{{{{.Image}}}}' {name}", check=True).stdout.strip() == \
            pushed.image_id
    digests = c.host.ssh(f"docker image inspect --format '{{{{json .RepoDigests}}}}' {IMAGE}", check=True).stdout
    assert f"vllm/vllm-openai@{pushed.manifest_digest}" in json.loads(digests)
    log = c.host.ssh(f"cat {LOG_FILE}", check=True).stdout
    assert f"Status: Downloaded newer image for {IMAGE}" in log, log


def test_rerun_changes_nothing(with_background_pull: Converge) -> None:
    again = run_deploy(with_background_pull.inventory, PROJECT / "deploy.py", "-v")
    assert again.rc == 0 and again.changed == 0, again.changed_ops or again.output[-4000:]
    assert f"image {IMAGE} present" in again.output, again.output[-4000:]


def test_fresh_converge_time_background_pull_vs_pull_at_container_start(
        with_background_pull: Converge, with_pull_at_container_start: Converge) -> None:
    new, old = with_background_pull, with_pull_at_container_start
    print(f"[image-pull] pull at container start, {old.host.name}: {_timeline(old)}", flush=True)
    # the previous behaviour pulled only once the model was complete: the two transfers did not overlap
    assert old.pull and old.shards and old.overlap_s < 2.0, _timeline(old)
    assert span(old.pull)[0] >= span(old.shards)[1] - 1.0, _timeline(old)
    ratio = new.result.seconds / old.result.seconds
    print(f"[image-pull] fresh converge wall time (image layer {REGISTRY_KIB} KiB/s from the registry, "
          f"4 x {SHARD_MIB} MiB shards at {HUB_KIB} KiB/s per GET from the hub): pull at container start "
          f"{old.result.seconds:.1f}s, background pull {new.result.seconds:.1f}s, ratio {ratio:.2f}", flush=True)


def test_failed_pull_names_image_and_log(with_background_pull: Converge, testbed: Testbed) -> None:
    c = with_background_pull
    before = c.host.ssh("docker ps --format '{{.Names}} {{.Image}}'", check=True).stdout
    inventory = write_inventory(c.inventory.parent / "inventory-other-image.py", [c.host],
                                {c.host.name: {**c.data[c.host.name], "vllm_image": OTHER_IMAGE}}, base_data(testbed))
    testbed.stop_registry()
    try:
        res = run_deploy(inventory, PROJECT / "deploy.py")
    finally:
        testbed.start_registry(REGISTRY_KIB)
    shown = [line.strip() for line in res.output.splitlines() if "docker pull of" in line or "docker.io" in line]
    print("[image-pull] pull with the registry stopped:", *shown[:8], sep="\n    ", flush=True)
    assert res.rc != 0, res.output[-4000:]
    assert f"docker pull of {OTHER_IMAGE} failed (unit {UNIT}); the last lines of {LOG_FILE}:" in res.output, \
        res.output[-4000:]
    assert "registry-1.docker.io" in res.output, res.output[-4000:]  # the log's tail: why the pull failed
    assert "Starting operation: Wait for the vLLM image pull" in res.output, res.output[-4000:]
    assert "Starting operation: Run vLLM" not in res.output, res.output[-4000:]
    assert c.host.ssh("docker ps --format '{{.Names}} {{.Image}}'", check=True).stdout == before


def test_reboot_mid_pull_then_rerun_pulls_and_runs_the_image(with_background_pull: Converge, testbed: Testbed) -> None:
    c = with_background_pull
    other = push_vllm_image(testbed, OTHER_IMAGE, OTHER_IMAGE.rsplit(":v", 1)[1])
    testbed.set_registry_rate(REGISTRY_KIB)  # about 64 s of transfer: the reboot hits it
    inventory = write_inventory(c.inventory.parent / "inventory-other-image.py", [c.host],
                                {c.host.name: {**c.data[c.host.name], "vllm_image": OTHER_IMAGE}}, base_data(testbed))
    since = float(c.host.ssh("date +%s.%N", check=True).stdout)

    def reboot_while_pulling() -> None:
        for _ in range(300):  # the registry has sent some of the layer
            if sum(b - a for a, b in registry_sends(testbed, c.host.ip, since)) >= 5:
                c.host.reboot()
                return
            time.sleep(0.2)

    before = c.host.boot_mark()
    cut, fired = run_with_fault(inventory, "Wait for the vLLM image pull", reboot_while_pulling, delay=0)
    assert fired and c.host.boot_mark() != before, cut.output[-3000:]
    assert cut.rc != 0, "the run finished before the reboot: the fault did not hit\n" + cut.output[-3000:]
    assert c.host.ssh(f"docker image inspect {OTHER_IMAGE}").returncode != 0  # the reboot cut the pull
    rerun = run_deploy(inventory, PROJECT / "deploy.py")
    assert rerun.rc == 0 and rerun.errors == 0, rerun.output[-4000:]
    assert "Start the vLLM image pull | Start pulling the vLLM image in the background" in rerun.changed_ops
    names = c.host.ssh("docker ps --filter label=gpu-llm.managed=true --format '{{.Names}}'", check=True).stdout.split()
    assert names and all(c.host.ssh(f"docker inspect --format '{{{{.Image}}}}' {n}", check=True).stdout.strip()
                         == other.image_id for n in names)
    again = run_deploy(inventory, PROJECT / "deploy.py")
    assert again.rc == 0 and again.changed == 0, again.changed_ops or again.output[-4000:]
