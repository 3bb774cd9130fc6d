"""Fixtures for end-to-end tests: a session testbed of booted Ubuntu 24.04 hosts and a real-pyinfra runner."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.testbed.harness import Host, Testbed, TestbedUnavailable
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
        base = {"hf_pip_args": testbed.pip_args, **_memlock_limit()}
        inv = write_inventory(tmp_path / "inventory.py", hosts, data, {**base, **(common or {})})
        return run_deploy(inv, deploy_file, *extra)

    return run
