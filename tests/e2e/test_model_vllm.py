"""Model download, chat template, vLLM containers, verify and bench on one testbed host, step by step.

One 4-GPU host (rtx2080ti-22g-x4) goes through the steps in file order; each step starts from the state the
previous one left (a failed step skips the rest). Run alone:
GPU_LLM_TESTBED_ID=5 .venv/bin/python -m pytest -m e2e tests/e2e/test_model_vllm.py -s -q
"""

from __future__ import annotations

import hashlib
import json
import runpy
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from gpu_llm.plan import InstancePlan, ServeConfig, plan_instances
from gpu_llm.plan.container import SPEC_LABEL, container_spec, spec_hash
from gpu_llm.plan.gpus import PLAN_QUERY_FIELDS, parse_query_csv
from gpu_llm.remote.download import MANIFEST_NAME, MAX_STALLS, RESUME_CHUNK
from gpu_llm.settings import Settings
from tests.e2e.conftest import base_data
from tests.testbed.config import PROJECT
from tests.testbed.harness import Host, Testbed
from tests.testbed.images import build_vllm_image, start_fake_hf
from tests.testbed.pyinfra_run import DeployResult

pytestmark = pytest.mark.e2e

FIXTURE = "rtx2080ti-22g-x4"
TEMPLATE = PROJECT / "templates" / "qwen3_nonthinking.jinja"
HOST_TEMPLATE = "/etc/gpu-llm/qwen3_nonthinking.jinja"
MODEL_DIR = "/home/llm/model/qwen/Qwen3-32B-AWQ"
REPO = "Qwen/Qwen3-32B-AWQ"
CUT_SHARD = "model-00002-of-00004.safetensors"
HF_TOKEN = "hf_e2eTokenDoNotPrint0123456789"
API_KEY = "sk-e2e-KeyDoNotPrint-9876543210"
SECRETS = (HF_TOKEN, API_KEY)


class Box:
    """The module's host, the data its inventory gets, and what the steps left for the next ones."""

    def __init__(self, testbed: Testbed, host: Host, data: dict[str, Any]) -> None:
        self.testbed, self.host, self.data = testbed, host, data
        self.outputs: list[str] = []  # every pyinfra output: no secret may appear in any of them
        self.passed: set[str] = set()

    def run(self, deploy: Callable[..., DeployResult]) -> DeployResult:
        result = deploy([self.host], {self.host.name: self.data})
        self.outputs.append(result.output)
        return result

    def need(self, step: str) -> None:
        if step not in self.passed:
            pytest.skip(f"step {step!r} did not pass; this step builds on it")

    def settings(self) -> Any:
        """The Settings the deploy computes for the host (group_data/all.py < fixture's common < host data)."""
        group = {k: v for k, v in runpy.run_path(str(PROJECT / "group_data" / "all.py")).items()
                 if not k.startswith("_")}
        common = base_data(self.testbed)
        return Settings.from_data({**group, **common, **self.data})

    def plans(self) -> list[InstancePlan]:
        """What the planner makes of the GPUs the host's nvidia-smi reports now."""
        csv = self.host.ssh(f"nvidia-smi --query-gpu={','.join(PLAN_QUERY_FIELDS)} --format=csv,noheader,nounits",
                            check=True).stdout
        return plan_instances(parse_query_csv(csv), ServeConfig.from_settings(self.settings()))

    def spec_hash(self, plan: InstancePlan) -> str:
        s = self.settings()
        key = s.vllm_api_key
        return spec_hash(container_spec(
            plan, hashlib.sha256(TEMPLATE.read_bytes()).hexdigest(),
            api_key_sha256=hashlib.sha256(key.encode()).hexdigest() if key else None))

    def inspect(self, name: str) -> dict[str, Any]:
        return json.loads(self.host.ssh(f"docker inspect {name}", check=True).stdout)[0]

    def containers(self) -> set[str]:
        return set(self.host.ssh("docker ps -a --format '{{.Names}}'", check=True).stdout.split())


def _ok(result: DeployResult) -> str:
    return f"rc {result.rc}, errors {result.errors}\n{result.output[-4000:]}"


def _assert_runs_plan(box: Box, plan: InstancePlan, bind: str) -> dict[str, Any]:
    """The container of `plan` runs the planner's args, image, label, mounts, restart policy, env and port."""
    c = box.inspect(plan.container_name)
    s = box.settings()
    assert c["State"]["Running"], c["State"]
    assert c["Config"]["Cmd"] == plan.vllm_args  # after the image's ENTRYPOINT
    assert c["Config"]["Image"] == plan.image
    assert c["Config"]["Labels"][SPEC_LABEL] == box.spec_hash(plan)
    assert sorted(c["HostConfig"]["Binds"]) == sorted([f"{s.model_dir}:/model/Qwen3-32B-AWQ:ro",
                                                       f"{HOST_TEMPLATE}:/app/qwen3_nonthinking.jinja:ro"])
    assert c["HostConfig"]["RestartPolicy"]["Name"] == s.vllm_restart_policy == "always"
    assert c["HostConfig"]["PortBindings"] == {"8000/tcp": [{"HostIp": bind, "HostPort": str(plan.port)}]}
    for k, v in plan.env.items():
        assert f"{k}={v}" in c["Config"]["Env"]
    return c


def _host_json(box: Box, method: str, path: str, body: dict | None = None, port: int = 8000) -> Any:
    """curl on the host against its loopback port (no API key): parsed JSON answer."""
    cmd = f"curl -sf -X {method} -H 'Content-Type: application/json' http://127.0.0.1:{port}{path}"
    res = box.host.ssh(cmd + (" -d @-" if body else ""), input=json.dumps(body) if body else None)
    assert res.returncode == 0, f"{cmd} -> rc {res.returncode}: {res.stdout} {res.stderr}"
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def box(testbed: Testbed) -> Box:
    from gpu_llm.plan.versions import newest_release_for

    t0 = time.monotonic()
    host = testbed.add_host(FIXTURE)
    version = newest_release_for((12, 8), 7.5).version  # the 570 driver's CUDA 12.8 on Turing
    image = f"vllm/vllm-openai:v{version}"
    build_vllm_image(host, image, version)
    endpoint = start_fake_hf(testbed, 8190 + host.n, "--shard-mib", "1")
    print(f"[time] test_model_vllm host + image + hub: {time.monotonic() - t0:.1f}s", flush=True)
    return Box(testbed, host, {"hf_endpoint": endpoint, "vllm_image": image, "vllm_health_timeout": 120})


def test_1_converge_runs_the_planned_container(box: Box, deploy: Callable[..., DeployResult]) -> None:
    first = box.run(deploy)
    assert first.rc == 0 and first.errors == 0, _ok(first)
    second = box.run(deploy)
    assert second.rc == 0 and second.changed == 0, f"second run changed {second.changed_ops}\n{_ok(second)}"

    (plan,) = box.plans()
    assert plan.tensor_parallel_size == 4 and plan.container_name == "coder"
    _assert_runs_plan(box, plan, bind="127.0.0.1")
    # without an API key the port is loopback only: not reachable from the bridge
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{box.host.ip}:8000/v1/models", timeout=5)
    models = _host_json(box, "GET", "/v1/models")
    assert [m["id"] for m in models["data"]] == ["coder"]
    chat = _host_json(box, "POST", "/v1/chat/completions", {
        "model": "coder", "max_tokens": 32, "messages": [{"role": "user", "content": "Say hello."}]})
    reply = chat["choices"][0]["message"]["content"]
    assert reply and "<think>" not in reply, chat
    box.passed.add("converge")


def test_2_edited_template_is_restored_and_container_recreated(box: Box, deploy: Callable[..., DeployResult]) -> None:
    box.need("converge")
    before = box.inspect("coder")["Id"]
    box.host.ssh(f"echo '{{# edited on the host #}}' >> {HOST_TEMPLATE}", check=True)
    repair = box.run(deploy)
    assert repair.rc == 0 and repair.errors == 0, _ok(repair)
    host_sha = box.host.ssh(f"sha256sum {HOST_TEMPLATE}", check=True).stdout.split()[0]
    assert host_sha == hashlib.sha256(TEMPLATE.read_bytes()).hexdigest()
    assert box.inspect("coder")["Id"] != before, "container not recreated after the template was restored"
    again = box.run(deploy)
    assert again.rc == 0 and again.changed == 0, f"changed {again.changed_ops}\n{_ok(again)}"
    box.passed.add("template")


def test_3_max_num_seqs_recreates_with_the_new_flag(box: Box, deploy: Callable[..., DeployResult]) -> None:
    box.need("template")
    before = box.inspect("coder")["Id"]
    box.data["vllm_max_num_seqs"] = 32
    result = box.run(deploy)
    assert result.rc == 0 and result.errors == 0, _ok(result)
    (plan,) = box.plans()
    c = _assert_runs_plan(box, plan, bind="127.0.0.1")
    assert c["Id"] != before
    cmd = c["Config"]["Cmd"]
    assert cmd[cmd.index("--max-num-seqs") + 1] == "32"
    box.passed.add("max_num_seqs")


def test_4_cut_download_fails_clearly_then_resumes_with_token(box: Box, testbed: Testbed,
                                                              deploy: Callable[..., DeployResult]) -> None:
    """A cut download fails the run naming it with the log tail; the re-run resumes the shard where the cut run
    left it and completes (also: hf_token works)."""
    box.need("max_num_seqs")
    hub_log = testbed.cfg.state / f"fake-hf-{8290 + box.host.n}.requests.jsonl"
    hub_log.unlink(missing_ok=True)
    endpoint = start_fake_hf(testbed, 8290 + box.host.n, "--shard-mib", "3", "--require-token", HF_TOKEN,
                             "--log", str(hub_log))
    assert requests.get(f"{endpoint}/api/models/{REPO}", timeout=5).status_code == 401
    probe_lines = len(hub_log.read_text().splitlines())
    # the link dies at byte 2,500,000 of the shard: the first GET keeps its whole 1 MiB reads, the resumed GETs
    # get nothing, and after MAX_STALLS of those the download gives up (hf_transfer "resumable", the default)
    cut, cuts = 2_500_000, 1 + MAX_STALLS
    kept = cut // RESUME_CHUNK * RESUME_CHUNK
    armed = requests.post(f"{endpoint}/_fake/arm", json={"file": CUT_SHARD, "after": cut, "times": cuts},
                          timeout=5).json()
    assert armed["remaining"] == cuts
    box.data.update(hf_endpoint=endpoint, hf_token=HF_TOKEN)
    box.host.ssh(f"rm {MODEL_DIR}/{MANIFEST_NAME} {MODEL_DIR}/{CUT_SHARD}", check=True)

    failed = box.run(deploy)
    assert failed.rc != 0, _ok(failed)
    assert f"download of {REPO}@main into {MODEL_DIR} did not complete" in failed.output, failed.output[-4000:]
    assert "--- last lines of the download log ---" in failed.output
    assert CUT_SHARD in failed.output.split("--- last lines of the download log ---", 1)[1]
    requests_seen = [json.loads(line) for line in hub_log.read_text().splitlines()[probe_lines:]]
    assert sum(bool(r.get("cut")) for r in requests_seen) == cuts
    assert all(r["auth"] for r in requests_seen), "a request to the hub went without the token"
    failed_lines = len(hub_log.read_text().splitlines())

    resumed = box.run(deploy)
    assert resumed.rc == 0 and resumed.errors == 0, _ok(resumed)
    shard_gets = [r for r in map(json.loads, hub_log.read_text().splitlines()[failed_lines:])
                  if r["method"] == "GET" and r["path"].endswith(CUT_SHARD)]
    assert [(r["range"], r["status"]) for r in shard_gets] == [(f"bytes={kept}-", 206)], shard_gets
    manifest = json.loads(box.host.ssh(f"cat {MODEL_DIR}/{MANIFEST_NAME}", check=True).stdout)
    info = requests.get(f"{endpoint}/api/models/{REPO}?blobs=true", timeout=5,
                        headers={"Authorization": f"Bearer {HF_TOKEN}"}).json()
    hub_sha = {s["rfilename"]: s["lfs"]["sha256"] for s in info["siblings"] if s.get("lfs")}
    assert manifest["commit"] == info["sha"] and set(manifest["files"]) == {s["rfilename"] for s in info["siblings"]}
    sums = box.host.ssh(f"cd {MODEL_DIR} && sha256sum {' '.join(sorted(hub_sha))}", check=True).stdout
    assert {name: digest for digest, name in (line.split() for line in sums.splitlines())} == hub_sha
    assert box.host.ssh("stat -c '%a %U' /etc/gpu-llm/hf-token", check=True).stdout.split() == ["600", "root"]
    assert box.host.ssh("cat /etc/gpu-llm/hf-token", check=True).stdout.strip() == HF_TOKEN

    again = box.run(deploy)
    assert again.rc == 0 and again.changed == 0, f"changed {again.changed_ops}\n{_ok(again)}"
    assert not any(HF_TOKEN in out for out in box.outputs), "the HF token appeared in pyinfra's output"
    box.passed.add("download")


def test_5_api_key_publishes_the_port_and_stays_secret(box: Box, deploy: Callable[..., DeployResult]) -> None:
    box.need("download")
    box.data["vllm_api_key"] = API_KEY
    result = box.run(deploy)
    assert result.rc == 0 and result.errors == 0, _ok(result)
    (plan,) = box.plans()
    c = _assert_runs_plan(box, plan, bind="0.0.0.0")  # vllm_bind's default
    assert API_KEY not in json.dumps(c["Config"]["Cmd"]) + json.dumps(c["Args"])
    assert API_KEY not in box.host.ssh("ps -ef", check=True).stdout
    env_file = box.host.ssh("stat -c '%a %U' /etc/gpu-llm/coder.env", check=True).stdout.split()
    assert env_file == ["600", "root"]
    url = f"http://{box.host.ip}:8000/v1/models"
    assert requests.get(url, timeout=10).status_code == 401
    with_key = requests.get(url, timeout=10, headers={"Authorization": f"Bearer {API_KEY}"})
    assert with_key.status_code == 200 and [m["id"] for m in with_key.json()["data"]] == ["coder"]
    assert not any(s in out for out in box.outputs for s in SECRETS), "a secret appeared in pyinfra's output"
    box.passed.add("api_key")


def test_6_two_instances_on_two_gpus_each(box: Box, deploy: Callable[..., DeployResult]) -> None:
    box.need("api_key")
    box.data["vllm_instances"] = [{"name": "qa", "port": 8000, "gpus": [0, 1]},
                                  {"name": "qb", "port": 8001, "gpus": [2, 3]}]
    result = box.run(deploy)
    assert result.rc == 0 and result.errors == 0, _ok(result)
    assert box.containers() == {"qa", "qb"}, "the single-instance container should be gone"
    assert box.host.ssh("test -e /etc/gpu-llm/coder.env").returncode == 1
    plans = box.plans()
    assert [(p.container_name, p.gpu_indices, p.tensor_parallel_size) for p in plans] == [
        ("qa", [0, 1], 2), ("qb", [2, 3], 2)]
    for plan, devices in zip(plans, (["0", "1"], ["2", "3"])):
        c = _assert_runs_plan(box, plan, bind="0.0.0.0")
        assert [d["DeviceIDs"] for d in c["HostConfig"]["DeviceRequests"]] == [devices]
        cmd = c["Config"]["Cmd"]
        assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
        assert f"{plan.container_name} on 127.0.0.1:{plan.port} verified" in result.output
        models = requests.get(f"http://{box.host.ip}:{plan.port}/v1/models", timeout=10,
                              headers={"Authorization": f"Bearer {API_KEY}"})
        assert [m["id"] for m in models.json()["data"]] == ["coder"]
    assert not any(s in out for out in box.outputs for s in SECRETS)
    box.passed.add("instances")


def test_7_bench_against_the_deployed_endpoint(box: Box, tmp_path: Path) -> None:
    box.need("instances")
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY + "\n")
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    t0 = time.monotonic()
    res = subprocess.run(
        [str(PROJECT / ".venv" / "bin" / "gpu-llm"), "bench", f"http://{box.host.ip}:8000",
         "--api-key-file", str(key_file), "--concurrency", "1,4", "--requests-per-level", "4",
         "--max-tokens", "16", "--prompt-tokens", "256", "--out", str(out), "--plot", str(png)],
        capture_output=True, text=True, timeout=300)
    print(f"[time] gpu-llm bench: {time.monotonic() - t0:.1f}s", flush=True)
    assert res.returncode == 0, res.stdout + res.stderr
    results = json.loads(out.read_text())
    assert results["model"] == "coder"
    assert [level["concurrency"] for level in results["levels"]] == [1, 4]
    for level in results["levels"]:
        s = level["summary"]
        assert (s["requests"], s["ok"], s["errors"]) == (4, 4, 0), s["error_counts"]
        assert s["output_tokens"] == 4 * 16 and s["output_tok_s"] > 0
        assert s["prompt_tokens_mean"] > 200
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
