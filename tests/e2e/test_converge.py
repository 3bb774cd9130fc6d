"""The real deploy.py against a fresh host converges, and a second run changes nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.testbed.harness import Testbed
from tests.testbed.images import build_vllm_image, start_fake_hf
from tests.testbed.pyinfra_run import DeployResult

pytestmark = pytest.mark.e2e


def test_deploy_twice_second_run_changes_nothing(testbed: Testbed, deploy: Callable[..., DeployResult]) -> None:
    from gpu_llm.plan.versions import newest_release_for

    host = testbed.add_host("h200-x1")
    version = newest_release_for((12, 8), 9.0).version  # what the 570 driver's CUDA 12.8 runs on Hopper
    image = f"vllm/vllm-openai:v{version}"
    build_vllm_image(host, image, version)  # hosts have no registry: the stand-in is there before the deploy
    endpoint = start_fake_hf(testbed, 8090 + host.n, "--shard-mib", "1")
    data = {host.name: {"hf_endpoint": endpoint, "vllm_image": image, "vllm_health_timeout": 120}}

    first = deploy([host], data)
    assert first.rc == 0 and first.errors == 0, first.output[-4000:]
    assert first.changed > 0
    second = deploy([host], data)
    assert second.rc == 0, second.output[-4000:]
    assert second.changed == 0, f"second run changed: {second.changed_ops}"
