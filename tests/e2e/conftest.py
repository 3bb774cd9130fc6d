"""Fixtures for end-to-end tests: a session testbed of booted Ubuntu 24.04 hosts and a real-pyinfra runner."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Shared with benchmarks/rerun.py through tests/testbed/data.py (no pytest there); re-exported here for the tests.
from tests.testbed.data import CAP_SYS_RESOURCE, base_data, stage_host  # noqa: F401
from tests.testbed.data import memlock_limit as _memlock_limit  # noqa: F401
from tests.testbed.harness import Host, Testbed, TestbedUnavailable
from tests.testbed.proc import timed
from tests.testbed.pyinfra_run import DeployResult, run_deploy, write_inventory
from tests.testbed.rootfs import ArchiveUnreachable

# GPU fixture per host of the session testbed (names: tests/testbed/gpus.py); override with
# GPU_LLM_TESTBED_HOSTS=h100-x1,a100-40g-x8
DEFAULT_HOSTS = ["h200-x1", "rtx2080ti-22g-x4"]


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


def module_runner(testbed: Testbed, tmp: Path) -> Callable[..., DeployResult]:
    """The `deploy` fixture's runner (same base data), usable by module-scoped fixtures."""

    def run(hosts: list[Host], data: dict[str, dict], *extra: str) -> DeployResult:
        inv = write_inventory(tmp / "inventory.py", hosts, data, base_data(testbed))
        return run_deploy(inv, "deploy.py", *extra)

    return run


def prepared_host(testbed: Testbed, fixture: str = "h200-x1", *hub_args: str, min_cc: float = 9.0,
                  image_from_registry: bool = False, secure_boot: bool = False,
                  **data: object) -> tuple[Host, dict[str, dict]]:
    """A fresh host with the stand-in vLLM image the 570 driver runs (loaded before the deploy; with
    `image_from_registry` only in the testbed's registry, for the deploy to pull) and its own fake HF hub (extra
    `hub_args` for fake_hf.py), booted with Secure Boot on if `secure_boot`; returns (host, host data)."""
    host = testbed.add_host(fixture, secure_boot=secure_boot)
    return host, {host.name: {**stage_host(testbed, host, *hub_args, min_cc=min_cc,
                                           image_from_registry=image_from_registry), **data}}
