"""gpu_llm/global_args.py: pyinfra's global-argument list, cached, answers as pyinfra's own does."""

from __future__ import annotations

import importlib

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


def test_merged_host_data_answers_as_hostdata_layer_by_layer() -> None:
    """Group data sets a default, host data overrides it, override data (set during a deploy) beats both, and the
    wrapped pop_global_arguments answers as pyinfra's own for each host."""
    import gpu_llm.operations  # noqa: F401 - installs it

    for module in ("pyinfra.api.operation", "pyinfra.api.deploy"):  # modules (pyinfra.api's attributes are functions)
        assert importlib.import_module(module).pop_global_arguments is global_args.pop_global_arguments
    inventory = Inventory(
        (["plain", ("own", {"_sudo": False, "_env": {"A": "host"}}), "overridden"], {"_timeout": 7}),
        gpu=(["plain", "own", "overridden"], {"_sudo": True, "_sudo_user": "llm", "_env": {"A": "group"}}),
    )
    state = State(inventory, Config())
    inventory.get_host("overridden").data._sudo_user = "ops"  # what `host.data.x = y` in a deploy does
    seen = {}
    for name in ("plain", "own", "overridden"):
        host = inventory.get_host(name)
        ours, _ = global_args.pop_global_arguments(state, host, {"name": "Do a thing"})
        theirs, _ = global_args._ORIGINAL_POP(state, host, {"name": "Do a thing"})
        assert ours == theirs
        seen[name] = (ours["_sudo"], ours["_sudo_user"], ours["_env"], ours["_timeout"])
    assert seen == {"plain": (True, "llm", {"A": "group"}, 7), "own": (False, "llm", {"A": "host"}, 7),
                    "overridden": (True, "ops", {"A": "group"}, 7)}
    merged = global_args.MergedData(inventory.get_host("own").data)
    env = merged._env
    env["B"] = "changed"  # a shallow copy, as HostData hands out: the data itself stays
    assert inventory.get_host("own").data._env == {"A": "host"}
    with pytest.raises(AttributeError):
        _ = merged._not_set_anywhere
