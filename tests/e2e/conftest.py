"""Fixtures for end-to-end tests: a session testbed of booted Ubuntu 24.04 hosts and a real-pyinfra runner."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.testbed.harness import Host, Testbed, TestbedUnavailable
from tests.testbed.images import build_vllm_image, start_fake_hf
from tests.testbed.proc import timed
from tests.testbed.pyinfra_run import DeployResult, run_deploy, write_inventory
from tests.testbed.rootfs import ArchiveUnreachable

# GPU fixture per host of the session testbed (names: tests/testbed/gpus.py); override with
# GPU_LLM_TESTBED_HOSTS=h100-x1,a100-40g-x8
DEFAULT_HOSTS = ["h200-x1", "rtx2080ti-22g-x4"]
CAP_SYS_RESOURCE = 24


def _memlock_limit() -> dict:
    """Without CAP_SYS_RESOURCE on this machine (some CI sandboxes) no process can raise its hard memlock limit,
    so runc fails on the seed's memlock=-1: keep the containers within the limit we have, and say so."""
    capbnd = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("CapBnd:")), 16)
    if capbnd >> CAP_SYS_RESOURCE & 1:
        return {}
    import resource

    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    print(f"[testbed] no CAP_SYS_RESOURCE here: vllm_ulimits memlock={hard} instead of -1")
    return {"vllm_ulimits": {"memlock": str(hard), "stack": "67108864"}}


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    """Booted hosts (tb.hosts, each with .ip .name .ssh() .reboot()); torn down after the session."""
    fixtures = os.environ.get("GPU_LLM_TESTBED_HOSTS", ",".join(DEFAULT_HOSTS)).split(",")
    tb = Testbed()
    try:
        with timed("testbed up (session)"):
            tb.up(fixtures)
    except (TestbedUnavailable, ArchiveUnreachable) as exc:
        tb.down() if not isinstance(exc, TestbedUnavailable) else None
        pytest.skip(f"e2e testbed unavailable: {exc}")
    try:
        yield tb
    finally:
        with timed("testbed down (session)"):
            tb.down()
        left = tb.leftovers()
        assert not left, f"testbed tear-down left behind: {left}"


@pytest.fixture
def deploy(testbed: Testbed, tmp_path: Path) -> Callable[..., DeployResult]:
    """deploy(hosts, data={name: {...}}, common={...}, deploy_file="deploy.py") runs the project's pyinfra.

    `common` defaults to the testbed's offline wheel source (hf_pip_args); host data wins over it."""

    def run(hosts: list[Host], data: dict[str, dict] | None = None, common: dict | None = None,
            deploy_file: str | Path = "deploy.py", *extra: str) -> DeployResult:
        inv = write_inventory(tmp_path / "inventory.py", hosts, data, {**base_data(testbed), **(common or {})})
        return run_deploy(inv, deploy_file, *extra)

    return run


def base_data(testbed: Testbed) -> dict:
    """Data every e2e inventory gets: the offline wheel source (hf_pip_args) and, where needed, a memlock limit."""
    return {"hf_pip_args": testbed.pip_args, **_memlock_limit()}


def module_runner(testbed: Testbed, tmp: Path) -> Callable[..., DeployResult]:
    """The `deploy` fixture's runner (same base data), usable by module-scoped fixtures."""

    def run(hosts: list[Host], data: dict[str, dict], *extra: str) -> DeployResult:
        inv = write_inventory(tmp / "inventory.py", hosts, data, base_data(testbed))
        return run_deploy(inv, "deploy.py", *extra)

    return run


def prepared_host(testbed: Testbed, fixture: str = "h200-x1", *hub_args: str, min_cc: float = 9.0,
                  **data: object) -> tuple[Host, dict[str, dict]]:
    """A fresh host with the stand-in vLLM image the 570 driver runs (hosts have no registry: the image is there
    before the deploy) and its own fake HF hub (extra `hub_args` for fake_hf.py); returns (host, host data)."""
    from gpu_llm.plan.versions import newest_release_for

    host = testbed.add_host(fixture)
    version = newest_release_for((12, 8), min_cc).version  # the 570 driver = CUDA 12.8
    image = f"vllm/vllm-openai:v{version}"
    build_vllm_image(host, image, version)
    endpoint = start_fake_hf(testbed, 8090 + host.n, "--shard-mib", "1", *hub_args)
    return host, {host.name: {"hf_endpoint": endpoint, "vllm_image": image, "vllm_health_timeout": 120, **data}}
