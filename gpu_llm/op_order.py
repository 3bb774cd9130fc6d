"""The order pyinfra gives an operation, computed without reading source files.

pyinfra (CLI mode) orders every operation of every host by the line numbers of the deploy code on the call stack
(pyinfra/api/util.py `get_operation_order_from_stack`, called once per operation and host). It gets them with
`inspect.stack()`, which for every frame looks up the source file and its module and reads the source line, then
calls `inspect.getframeinfo` on each frame again. Profiled on a no-op re-run of deploy.py (cProfile, 6 hosts) that was
about 5 ms per operation and host: the largest share of the controller's CPU. `order_from_stack` returns the same list
from the frame objects alone (file name, and the line where the frame's current instruction starts, which is what
getframeinfo reports on Python 3.11+); tests/unit/test_op_order.py compares the two on real stacks.

Our own code because pyinfra has no switch for it; `install()` swaps it in only where pyinfra still calls its own.
"""

from __future__ import annotations

import importlib
import os
import sys
from itertools import islice
from types import FrameType
from typing import Any

import pyinfra
from pyinfra.api import util as pyinfra_util

# the module (pyinfra.api's `operation` attribute is the decorator of the same name)
pyinfra_operation = importlib.import_module("pyinfra.api.operation")

_ORIGINAL = pyinfra_util.get_operation_order_from_stack


def _lineno(frame: FrameType) -> int:
    """The line inspect.getframeinfo(frame).lineno gives: the start line of the current instruction's position."""
    if frame.f_lasti >= 0:
        position = next(islice(frame.f_code.co_positions(), frame.f_lasti // 2, None), None)
        if position is not None and position[0] is not None:
            return position[0]
    return frame.f_lineno


def order_from_stack(state: Any, frame: FrameType | None = None) -> list[int]:
    """What pyinfra.api.util.get_operation_order_from_stack(state) returns when called from `frame` (default: the
    caller's frame)."""
    frames: list[FrameType] = []
    f = frame if frame is not None else sys._getframe(1)
    while f is not None:
        frames.append(f)
        f = f.f_back
    frames.reverse()  # outermost first, as reversed(inspect.stack())
    i = 0
    if state.current_deploy_filename:  # from the first frame of the deploy file on
        for i, f in enumerate(frames):
            if f.f_code.co_filename == state.current_deploy_filename:
                break
        else:  # not on the stack: pyinfra keeps only its own innermost frame, which it then skips
            i = len(frames)
    line_numbers = [state.current_op_file_number] if pyinfra.is_cli else []
    line_numbers += [_lineno(f) for f in frames[i:]
                     if not f.f_code.co_filename.startswith(pyinfra_util.PYINFRA_INSTALL_DIR)]
    return line_numbers


def _called_from_pyinfra(state: Any) -> list[int]:
    return order_from_stack(state, sys._getframe(1))


OFF_ENV = "GPU_LLM_OP_ORDER"  # =inspect keeps pyinfra's own walk (benchmarks/rerun.py times both side by side)


def install() -> None:
    """Make pyinfra's operation module use order_from_stack (once; not if someone else replaced pyinfra's)."""
    if os.environ.get(OFF_ENV) == "inspect":
        return
    if getattr(pyinfra_operation, "get_operation_order_from_stack", None) is _ORIGINAL:
        pyinfra_operation.get_operation_order_from_stack = _called_from_pyinfra
