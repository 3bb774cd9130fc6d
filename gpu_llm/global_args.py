"""pyinfra's list of global arguments, computed once per process instead of once per operation call, and host data
read once per call to pop them instead of once per argument.

pyinfra 3.10 pops the global arguments (`_sudo`, `name`, ...) of every operation and @deploy call of every host with
`pop_global_arguments` (pyinfra/api/arguments.py), which begins with `all_global_arguments()`: that evaluates
`typing.get_type_hints(AllArguments)` on each call, ~0.13 ms. In a 6-host no-op re-run that was a fifth of the
controller's time spent building the operations (py-spy on benchmarks/rerun.py's run c). The hints of a class
defined at import time cannot change, so `install()` hands pyinfra a function returning a copy of the first answer.
Our own because pyinfra has no cache for it; tests/unit/test_global_args.py checks it answers as pyinfra does.

The same function then looks up each of its ~30 arguments in `host.data` (a `_sudo` in group data is a default for
all of that group's operations). pyinfra's HostData walks its five layers (override, host, groups, global, @deploy
data) per key, merging the groups' dicts again and raising a KeyError per layer that lacks the key: ~11,700 lookups
and a quarter of the controller's time building a 6-host no-op run's operations (cProfile of benchmarks/rerun.py's
run c). `install()` wraps pop_global_arguments where pyinfra's operation and @deploy decorators call it, handing it
the host with its data layers merged once for that call (the first layer holding a key wins, as in HostData).
"""

from __future__ import annotations

import importlib
from copy import copy
from functools import cache, wraps
from typing import Any

# the module (pyinfra.api's `arguments` attribute may be shadowed by a name of the same spelling)
pyinfra_arguments = importlib.import_module("pyinfra.api.arguments")

_ORIGINAL = pyinfra_arguments.all_global_arguments
_ORIGINAL_POP = pyinfra_arguments.pop_global_arguments
# the modules whose decorators call pop_global_arguments by the name they imported
_CALLERS = tuple(importlib.import_module(m) for m in ("pyinfra.api.operation", "pyinfra.api.deploy"))


@cache
def _hints() -> tuple[tuple[str, type], ...]:
    return tuple(_ORIGINAL())


def all_global_arguments() -> list[tuple[str, type]]:
    """What pyinfra's all_global_arguments() returns (a new list each call, as pyinfra's is)."""
    return list(_hints())


class MergedData:
    """A HostData's layers merged once: attribute lookups answer as HostData's do (a shallow copy of the value of the
    first layer holding the key; AttributeError when none does), without walking the layers per key."""

    __slots__ = ("_merged",)

    def __init__(self, host_data: Any) -> None:
        merged: dict[str, Any] = {}
        for layer in reversed([layer() if callable(layer) else layer for layer in host_data.datas]):
            merged.update(layer)
        self._merged = merged

    def __getattr__(self, key: str) -> Any:
        try:
            return copy(self._merged[key])
        except KeyError:
            raise AttributeError(key) from None


class _DataMergedHost:
    """The host as pop_global_arguments sees it: its data merged once, everything else the host's own."""

    __slots__ = ("_host", "data")

    def __init__(self, host: Any) -> None:
        self._host = host
        self.data = MergedData(host.data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


@wraps(_ORIGINAL_POP)
def pop_global_arguments(state: Any, host: Any, kwargs: dict[str, Any]) -> Any:
    """pyinfra's pop_global_arguments, given the host with its data merged once for this call."""
    return _ORIGINAL_POP(state, _DataMergedHost(host), kwargs)


def install() -> None:
    """Make pop_global_arguments use the cached list, and its callers the merged host data (once each; not where
    someone else replaced pyinfra's)."""
    if pyinfra_arguments.all_global_arguments is _ORIGINAL:
        pyinfra_arguments.all_global_arguments = all_global_arguments
    for module in _CALLERS:
        if getattr(module, "pop_global_arguments", None) is _ORIGINAL_POP:
            module.pop_global_arguments = pop_global_arguments
