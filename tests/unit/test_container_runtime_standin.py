"""The testbed's nvidia-container-runtime stand-in judges NVIDIA_REQUIRE_CUDA as nvidia-container-cli does, and agrees
with the planner's gpu_llm.plan.versions.driver_runs on the real CUDA 12.9 image's requirement."""

import importlib.util
import json
from pathlib import Path

import pytest

from gpu_llm.plan import versions

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "nvidia_require_cuda_12.9.txt"
spec = importlib.util.spec_from_file_location("runtime_standin", ROOT / "tests/testbed/debs/nvidia_container_runtime.py")
runtime = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runtime)
REQ = next(ln.split("=", 1)[1] for ln in FIXTURE.read_text().splitlines() if ln.startswith("NVIDIA_REQUIRE_CUDA="))


@pytest.mark.parametrize(("driver", "name", "ok"), [
    ("570.172.08", "NVIDIA A100-SXM4-40GB", True),  # brand=nvidia,driver>=570,driver<571
    ("570.172.08", "NVIDIA GeForce RTX 4090", False),  # no geforce clause, CUDA 12.8 < 12.9
    ("575.57.08", "NVIDIA GeForce RTX 4090", True),  # CUDA 12.9 itself
    ("555.58.02", "NVIDIA H100 80GB HBM3", False),  # 555 has no clause
])
def test_the_cuda_12_9_requirement(driver, name, ok):
    cuda = {"570": "12.8", "575": "12.9", "555": "12.5"}[driver.split(".")[0]]
    facts = {"cuda": cuda, "driver": driver, "arch": "8.0", "brand": runtime.brand(name)}
    assert runtime.satisfied(REQ, facts) is ok
    if driver.split(".")[0] in ("570", "575"):  # the planner's table covers these branches
        assert versions.driver_runs((12, 9), driver, {versions.gpu_brand(name)}) is ok


def test_create_is_refused_with_nvidia_container_clis_message(tmp_path, monkeypatch):
    gpus, loaded = tmp_path / "gpus.json", tmp_path / "loaded"
    gpus.write_text(json.dumps([{"name": "NVIDIA GeForce RTX 4090", "compute_cap": "8.9"}]))
    loaded.write_text("570.172.08\n")
    monkeypatch.setattr(runtime, "GPUS", gpus)
    monkeypatch.setattr(runtime, "LOADED", loaded)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    env = ["NVIDIA_VISIBLE_DEVICES=all", f"NVIDIA_REQUIRE_CUDA={REQ}"]
    (bundle / "config.json").write_text(json.dumps({"process": {"env": env}}))
    assert runtime.check(bundle) == ("nvidia-container-cli: requirement error: unsatisfied condition: cuda>=12.9, "
                                     "please update your driver to a newer version, or use an earlier cuda container")
    (bundle / "config.json").write_text(json.dumps({"process": {"env": env + ["NVIDIA_DISABLE_REQUIRE=true"]}}))
    assert runtime.check(bundle) is None
    (bundle / "config.json").write_text(json.dumps({"process": {"env": [f"NVIDIA_REQUIRE_CUDA={REQ}"]}}))
    assert runtime.check(bundle) is None  # no GPU asked for: nothing to check


def test_nvswitch_hosts_hand_the_fabric_state_to_the_container(tmp_path, monkeypatch):
    switches, fabric = tmp_path / "nvswitches.json", tmp_path / "fabric-state"
    monkeypatch.setattr(runtime, "SWITCHES", switches)
    monkeypatch.setattr(runtime, "FABRIC", fabric)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    config = bundle / "config.json"

    def env_after(env: list[str]) -> list[str]:
        config.write_text(json.dumps({"process": {"env": env}}))
        runtime.hand_fabric_state(bundle)
        return json.loads(config.read_text())["process"]["env"]

    switches.write_text("[]")
    assert env_after(["NVIDIA_VISIBLE_DEVICES=all"]) == ["NVIDIA_VISIBLE_DEVICES=all"]  # no NVSwitch: nothing
    switches.write_text(json.dumps([{"pci_bus_id": "00000000:05:00.0"}]))
    assert env_after(["NVIDIA_VISIBLE_DEVICES=all"])[-1] == "GPU_LLM_TESTBED_FABRIC=Not Started"
    fabric.write_text("Completed\n")
    assert env_after(["NVIDIA_VISIBLE_DEVICES=all", "GPU_LLM_TESTBED_FABRIC=x"]) == [
        "NVIDIA_VISIBLE_DEVICES=all", "GPU_LLM_TESTBED_FABRIC=Completed"]
    assert env_after(["PATH=/bin"]) == ["PATH=/bin"]  # no GPU asked for
