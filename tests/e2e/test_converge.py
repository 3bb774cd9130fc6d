"""The real deploy.py against a fresh host converges, and a second run changes nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import prepared_host
from tests.testbed.harness import Testbed
from tests.testbed.pyinfra_run import DeployResult

pytestmark = pytest.mark.e2e


def test_deploy_twice_second_run_changes_nothing(testbed: Testbed, deploy: Callable[..., DeployResult]) -> None:
    host, data = prepared_host(testbed, "h200-x1")

    first = deploy([host], data)
    assert first.rc == 0 and first.errors == 0, first.output[-4000:]
    assert first.changed > 0
    second = deploy([host], data)
    assert second.rc == 0, second.output[-4000:]
    assert second.changed == 0, f"second run changed: {second.changed_ops}"
