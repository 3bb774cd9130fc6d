"""gpu_llm.op_order: the same operation order as pyinfra's inspect.stack() walk, on real stacks."""

from __future__ import annotations

from types import SimpleNamespace

import pyinfra
import pytest
from pyinfra.api import util as pyinfra_util

from gpu_llm import op_order

pyinfra_operation = op_order.pyinfra_operation


def both(state):  # noqa: ANN001, ANN201 - both called from one line: the same frames and line numbers
    return op_order._ORIGINAL(state), op_order.order_from_stack(state)


def spread_over_lines(state, depth):  # noqa: ANN001, ANN201
    if depth:
        return spread_over_lines(
            state,
            depth - 1,
        )
    return (
        both(
            state
        )
    )


def in_comprehension(state):  # noqa: ANN001, ANN201
    return [both(state) for _ in range(1)][0]


@pytest.mark.parametrize("is_cli", [True, False])
@pytest.mark.parametrize("deploy_file", [__file__, None, "/not/on/the/stack.py"])
@pytest.mark.parametrize("call", [lambda s: both(s), lambda s: spread_over_lines(s, 3), in_comprehension])
def test_same_order_as_pyinfra(monkeypatch: pytest.MonkeyPatch, is_cli: bool, deploy_file: str | None, call) -> None:  # noqa: ANN001
    monkeypatch.setattr(pyinfra, "is_cli", is_cli)
    state = SimpleNamespace(current_deploy_filename=deploy_file, current_op_file_number=7)
    theirs, ours = call(state)
    assert ours == theirs
    assert (ours[:1] == [7]) == is_cli
    if deploy_file == __file__:  # the frames from this file's outermost on: this test and the calls below it
        assert len(ours) >= 2 + is_cli


def test_installed_where_pyinfra_calls_it_and_drops_only_its_own_frame() -> None:
    import gpu_llm.operations  # noqa: F401 - installs it

    assert pyinfra_operation.get_operation_order_from_stack is op_order._called_from_pyinfra
    assert pyinfra_util.get_operation_order_from_stack is op_order._ORIGINAL  # pyinfra's own module untouched
    state = SimpleNamespace(current_deploy_filename=None, current_op_file_number=0)

    def via_pyinfra():  # noqa: ANN202 - as pyinfra's solve_operation_consistency calls it
        return pyinfra_operation.get_operation_order_from_stack(state), op_order._ORIGINAL(state)

    ours, theirs = via_pyinfra()
    assert ours == theirs
