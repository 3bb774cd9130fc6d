"""pyinfra's list of global arguments, computed once per process instead of once per operation call.

pyinfra 3.10 pops the global arguments (`_sudo`, `name`, ...) of every operation and @deploy call of every host with
`pop_global_arguments` (pyinfra/api/arguments.py), which begins with `all_global_arguments()`: that evaluates
`typing.get_type_hints(AllArguments)` on each call, ~0.13 ms. In a 6-host no-op re-run that was a fifth of the
controller's time spent building the operations (py-spy on benchmarks/rerun.py's run c). The hints of a class
defined at import time cannot change, so `install()` hands pyinfra a function returning a copy of the first answer.
Our own because pyinfra has no cache for it; tests/unit/test_global_args.py checks it answers as pyinfra does.
"""

from __future__ import annotations

import importlib
from functools import cache

# the module (pyinfra.api's `arguments` attribute may be shadowed by a name of the same spelling)
pyinfra_arguments = importlib.import_module("pyinfra.api.arguments")

_ORIGINAL = pyinfra_arguments.all_global_arguments


@cache
def _hints() -> tuple[tuple[str, type], ...]:
    return tuple(_ORIGINAL())


def all_global_arguments() -> list[tuple[str, type]]:
    """What pyinfra's all_global_arguments() returns (a new list each call, as pyinfra's is)."""
    return list(_hints())


def install() -> None:
    """Make pop_global_arguments use the cached list (once; not if someone else replaced pyinfra's)."""
    if pyinfra_arguments.all_global_arguments is _ORIGINAL:
        pyinfra_arguments.all_global_arguments = all_global_arguments
