"""Bad host data through the real `pyinfra inventory.py deploy.py`: each case refused naming the key, the host untouched.

One bare testbed host for the module. Every case is its own pyinfra run (a few seconds: the refusal comes while
pyinfra loads deploy.py, before any fact or operation); the runs go three at a time since they only read the
host. A snapshot of the host (dpkg status, /etc, Docker containers and images) is taken before and after.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tests.testbed.harness import Host, Testbed
from tests.testbed.pyinfra_run import DeployResult, run_deploy, write_inventory

pytestmark = pytest.mark.e2e

# (key named in the message, host data, text the message must hold); cases from tests/unit/test_settings.py
# plus typos and checks that only a later @deploy makes (vllm_api_key_file is read in the vllm step).
CASES: list[tuple[str, dict, str]] = [
    ("vllm_port", {"vllm_port": 70000}, "from 1 to 65535"),
    ("vllm_port", {"vllm_port": "8000"}, "an integer"),
    ("vllm_gpu_memory_utilization", {"vllm_gpu_memory_utilization": 1.2}, "at most 0.99"),
    ("vllm_tensor_parallel_size", {"vllm_tensor_parallel_size": 3}, "divide Qwen3-32B"),
    ("vllm_max_model_len", {"vllm_max_model_len": 131072}, "rope scaling"),
    ("vllm_max_model_length", {"vllm_max_model_length": 32768}, "did you mean 'vllm_max_model_len'"),
    ("nvidia_drvier_version", {"nvidia_drvier_version": "570.153.02"}, "did you mean 'nvidia_driver_version'"),
    ("hf_tokn", {"hf_tokn": "hf_abc"}, "did you mean 'hf_token'"),
    ("vllm_profile", {"vllm_profile": "fast"}, "'balanced'"),
    ("model_dir", {"model_dir": "models/qwen"}, "absolute path"),
    ("vllm_image", {"vllm_image": "vllm/vllm-openai"}, "with a tag"),
    ("vllm_bind", {"vllm_bind": "localhost"}, "IP address"),
    ("vllm_block_size", {"vllm_block_size": 64}, "8, 16, 32"),
    ("docker_package_source", {"docker_package_source": "snap"}, "'docker', 'ubuntu'"),
    ("hf_endpoint", {"hf_endpoint": "hf-mirror.com"}, "http:// or https://"),
    ("nvidia_driver_reboot", {"nvidia_driver_reboot": "yes"}, "true or false"),
    ("vllm_extra_args", {"vllm_extra_args": "--enforce-eager"}, "list of strings"),
    ("vllm_api_key", {"vllm_api_key": "short"}, "at least 8"),
    ("vllm_instances", {"vllm_instances": [{"name": "a", "port": 8000, "gpus": [0]},
                                           {"name": "b", "port": 8000, "gpus": [1]}]}, "distinct"),
    ("nvidia_driver_version", {"nvidia_driver_version": "575.57.08"}, "set both to the same branch"),
    ("vllm_api_key_file", {"vllm_api_key_file": "/nonexistent/gpu-llm-key"}, "cannot read"),
]
IDS = [f"{key}={next(iter(data.values()))!r}"[:60] for key, data, _ in CASES]

SNAPSHOT = ("sha256sum /var/lib/dpkg/status; "
            "find /etc -xdev -printf '%p %y %m %U %s\\n' | sort; "
            "find /etc -xdev -type f -print0 | sort -z | xargs -0 sha256sum; "
            "docker ps -a --no-trunc --format '{{.ID}} {{.Names}} {{.State}}'; "
            "docker images --no-trunc --format '{{.ID}} {{.Repository}}:{{.Tag}}'")


def snapshot(host: Host) -> str:
    res = host.ssh(SNAPSHOT)
    assert res.returncode == 0, res.stderr
    return res.stdout


@dataclass
class Refusals:
    host: Host
    before: str
    after: str
    results: list[DeployResult]


@pytest.fixture(scope="module")
def refusals(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Refusals]:
    host = testbed.add_host("h200-x1")
    tmp = tmp_path_factory.mktemp("bad-input")
    before = snapshot(host)

    def one(i: int) -> DeployResult:
        inv = write_inventory(tmp / f"inventory_{i}.py", [host], {host.name: CASES[i][1]},
                              {"hf_pip_args": testbed.pip_args})
        return run_deploy(inv, "deploy.py", timeout=120)

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(one, range(len(CASES))))
    print(f"[time] {len(CASES)} bad-input runs: {time.monotonic() - t0:.1f}s", flush=True)
    yield Refusals(host, before, snapshot(host), results)


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_refused_naming_the_key_before_any_operation(refusals: Refusals, i: int) -> None:
    key, data, allowed = CASES[i]
    res = refusals.results[i]
    assert res.rc != 0, res.output[-3000:]
    assert "SettingsError" in res.output, res.output[-3000:]
    # one message line names the key and says what is allowed (not just the traceback's source lines)
    assert any(key in line and allowed in line for line in res.output.splitlines()), res.output[-3000:]
    assert "--> Beginning operation run" not in res.output, "operations ran before the settings were refused"
    assert res.seconds < 30, f"a refusal should take seconds, took {res.seconds:.1f}s"


def test_host_unchanged(refusals: Refusals) -> None:
    assert refusals.before == refusals.after, "\n".join(
        line for line in set(refusals.before.splitlines()) ^ set(refusals.after.splitlines()))[:3000]
