"""gpu_llm/global_args.py: pyinfra's global-argument list, cached, answers as pyinfra's own does."""

from __future__ import annotations

import pytest
from pyinfra.api import Config, Inventory, State

from gpu_llm import global_args


def test_cached_list_is_pyinfras_and_a_new_list_each_call() -> None:
    first = global_args.all_global_arguments()
    assert first == global_args._ORIGINAL() and len(first) >= 20
    assert ("name", str) in first and ("_sudo", bool) in first
    first.clear()  # a caller changing its copy does not change the next answer
    assert global_args.all_global_arguments() == global_args._ORIGINAL()


def test_installed_into_pop_global_arguments_which_still_pops_and_checks_types() -> None:
    import gpu_llm.operations  # noqa: F401 - installs it

    assert global_args.pyinfra_arguments.all_global_arguments is global_args.all_global_arguments
    global_args.install()  # a second install changes nothing
    assert global_args.pyinfra_arguments.all_global_arguments is global_args.all_global_arguments
    inventory = Inventory((["somehost"], {}))
    state = State(inventory, Config())
    host = inventory.get_host("somehost")
    kwargs = {"name": "Do a thing", "_sudo": True, "other": 1}
    arguments, found = global_args.pyinfra_arguments.pop_global_arguments(state, host, kwargs)
    assert arguments["name"] == "Do a thing" and arguments["_sudo"] is True and sorted(found) == ["_sudo", "name"]
    assert kwargs == {"other": 1}
    with pytest.raises(Exception, match="_sudo"):
        global_args.pyinfra_arguments.pop_global_arguments(state, host, {"_sudo": "yes please"})
