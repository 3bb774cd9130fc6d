"""Issue 13 end to end: an 8-GPU host serves replicas through vLLM's data parallelism, on the image `vllm_image:
auto` picks for driver 570 (a CUDA 12.9 image the stand-in runtime admits through its NVIDIA_REQUIRE_CUDA brand/driver
clause, as nvidia-container-cli does), with the tool-call parser coding clients use (the reasoning parser and its
behaviour with the planner's flags: tests/unit/test_fake_vllm_api.py and, on a real H200, docs/h200-serve/).

Run alone: GPU_LLM_TESTBED_ID=3 GPU_LLM_TESTBED_HOSTS=a100-40g-x8 .venv/bin/python -m pytest -m e2e \
tests/e2e/test_serving.py -s -q
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from gpu_llm.plan import InstancePlan, ServeConfig, plan_instances
from gpu_llm.plan.gpus import PLAN_QUERY_FIELDS, parse_query_csv
from gpu_llm.settings import Settings
from tests.testbed.harness import Host, Testbed
from tests.testbed.images import build_vllm_image, start_fake_hf
from tests.testbed.pyinfra_run import DeployResult

pytestmark = pytest.mark.e2e

FIXTURE = "a100-40g-x8"  # 8x A100 40 GB, NVLink: TP1 holds ~2 sequences of 32768, so TP2 x 4 replicas
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "London"]}},
                   "required": ["city"]}}}]


@dataclass
class Box:
    testbed: Testbed
    host: Host
    data: dict[str, Any]

    def plans(self) -> list[InstancePlan]:
        """The planner's plan for the GPUs the host's nvidia-smi reports (driver 570 once converged)."""
        csv = self.host.ssh(f"nvidia-smi --query-gpu={','.join(PLAN_QUERY_FIELDS)} --format=csv,noheader,nounits",
                            check=True).stdout
        return plan_instances(parse_query_csv(csv), ServeConfig.from_settings(Settings.from_data(self.data)))

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        cmd = "curl -sf -X POST -H 'Content-Type: application/json' http://127.0.0.1:8000/v1/chat/completions -d @-"
        res = self.host.ssh(cmd, input=json.dumps({"model": "coder", **body}))
        assert res.returncode == 0, f"{cmd} -> rc {res.returncode}: {res.stdout} {res.stderr}"
        return json.loads(res.stdout)

    def docker_run(self, image: str, *options: str) -> Any:
        from tests.testbed.data import memlock_limit

        # the daemon's default memlock=-1 needs CAP_SYS_RESOURCE, which some sandboxes lack (as the deploy's data)
        limits = memlock_limit().get("vllm_ulimits", {})
        ulimit = f"--ulimit memlock={limits['memlock']}" if limits else ""
        return self.host.ssh(f"docker run --rm --runtime nvidia --gpus all {ulimit} {' '.join(options)} "
                             f"--entrypoint python3 {image} -c 'print(\"started\")'", timeout=120)


@pytest.fixture(scope="module")
def box(testbed: Testbed) -> Box:
    from gpu_llm.plan.types import GPU
    from tests.testbed.gpus import FIXTURES

    t0 = time.monotonic()
    host = testbed.add_host(FIXTURE)
    # the image the planner will pick once driver 570 runs: stage exactly that one (no vllm_image in the data)
    gpus = [GPU(i, g["name"], g["memory_mib"], tuple(map(int, g["compute_cap"].split("."))), "570.172.08")
            for i, g in enumerate(FIXTURES[FIXTURE])]
    [plan] = plan_instances(gpus, ServeConfig.from_settings(Settings.from_data({})))
    assert plan.image == "vllm/vllm-openai:v0.21.0-cu129", plan.image
    build_vllm_image(host, plan.image, plan.vllm_version)
    endpoint = start_fake_hf(testbed, 8290 + host.n, "--shard-mib", "1")
    print(f"[time] test_serving host + image + hub: {time.monotonic() - t0:.1f}s", flush=True)
    return Box(testbed, host, {"hf_endpoint": endpoint, "vllm_health_timeout": 120})


def test_1_converge_serves_replicas_on_the_auto_image(box: Box, deploy: Callable[..., DeployResult]) -> None:
    first = deploy([box.host], {box.host.name: box.data})
    assert first.rc == 0 and first.errors == 0, first.output[-4000:]
    [plan] = box.plans()
    assert (plan.tensor_parallel_size, plan.data_parallel_size, plan.layout) == (2, 4, "data-parallel")
    c = json.loads(box.host.ssh("docker inspect coder", check=True).stdout)[0]
    assert c["State"]["Running"] and c["Config"]["Image"] == plan.image == "vllm/vllm-openai:v0.21.0-cu129"
    cmd = c["Config"]["Cmd"]
    assert cmd == plan.vllm_args
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2" and cmd[cmd.index("--data-parallel-size") + 1] == "4"
    # tool calls parsed; no reasoning parser on 0.21 (checked only for 0.8.5-0.9.x and 0.26+: versions.py)
    assert cmd[cmd.index("--tool-call-parser") + 1] == "hermes" and "--enable-auto-tool-choice" in cmd
    assert "--reasoning-parser" not in cmd
    # the image carries the CUDA 12.9 requirement the runtime checked when the container started
    env = c["Config"]["Env"]
    assert any(e.startswith("NVIDIA_REQUIRE_CUDA=cuda>=12.9 ") and "brand=nvidia,driver>=570,driver<571" in e
               for e in env)
    assert "nvidia-container-runtime" in box.host.ssh("cat /var/log/gpu-llm-testbed/calls.log").stdout
    second = deploy([box.host], {box.host.name: box.data})
    assert second.rc == 0 and second.changed == 0, second.changed_ops


def test_2_the_runtime_refuses_what_the_driver_cannot_run(box: Box) -> None:
    image = box.plans()[0].image
    ok = box.docker_run(image)
    assert ok.returncode == 0 and "started" in ok.stdout, ok.stderr
    # a CUDA 13 requirement on driver 570 (CUDA 12.8): refused whatever the brand
    cuda13 = box.docker_run(image, "-e", "'NVIDIA_REQUIRE_CUDA=cuda>=13.0'")
    assert cuda13.returncode != 0
    assert "unsatisfied condition: cuda>=13.0, please update your driver" in cuda13.stderr, cuda13.stderr
    # the same CUDA 12.9 image on GeForce cards: no brand clause admits them
    gpus_json = "/etc/gpu-llm-testbed/gpus.json"
    box.host.ssh(f"cp {gpus_json} {gpus_json}.orig && sed -i 's/NVIDIA A100-SXM4-40GB/NVIDIA GeForce RTX 4090/' "
                 f"{gpus_json}", check=True)
    try:
        geforce = box.docker_run(image)
    finally:
        box.host.ssh(f"mv {gpus_json}.orig {gpus_json}", check=True)
    assert geforce.returncode != 0 and "unsatisfied condition: cuda>=12.9" in geforce.stderr, geforce.stderr


def test_3_the_api_coding_clients_need(box: Box) -> None:
    plain = box.chat({"messages": [{"role": "user", "content": "Reply with the single word: ready"}]})
    message = plain["choices"][0]["message"]
    assert message["content"] and not message.get("reasoning_content") and not message["tool_calls"]
    tools = box.chat({"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": WEATHER})
    choice = tools["choices"][0]
    [call] = choice["message"]["tool_calls"]
    assert choice["finish_reason"] == "tool_calls" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    # opt-in thinking without a reasoning parser (0.21): the think block stays in content, as vLLM returns it
    thinking = box.chat({"messages": [{"role": "user", "content": "Why?"}],
                         "chat_template_kwargs": {"enable_thinking": True}})
    message = thinking["choices"][0]["message"]
    assert message["content"].startswith("<think>") and not message.get("reasoning_content")
