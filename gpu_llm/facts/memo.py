"""Read a fact once per host and run: pyinfra 3 runs a fact's command on every get_fact, and a no-op re-run is
mostly fact reads. Ops that change what a fact reports call forget() so the next read runs the command again."""

from __future__ import annotations

from typing import Any

from pyinfra.context import ContextObject, ctx_host

_ATTR = "_gpu_llm_facts"  # the memo lives on the host object, so it ends with the run (and each test's host)


def _memo(host: Any) -> dict:
    if isinstance(host, ContextObject):  # pyinfra's `host` proxy is one object for every host: use the real one
        host = ctx_host.get()
    return vars(host).setdefault(_ATTR, {})


def fact(host: Any, cls: type, **kwargs: Any) -> Any:
    """host.get_fact(cls, **kwargs), its command run only on the first call for this host and arguments."""
    memo, key = _memo(host), (cls, tuple(sorted(kwargs.items())))
    if key not in memo:
        memo[key] = host.get_fact(cls, **kwargs)
    return memo[key]


def forget(host: Any, cls: type) -> None:
    """What `cls` reports is about to change (a command of ours): read it afresh next time."""
    memo = _memo(host)
    for key in [k for k in memo if k[0] is cls]:
        del memo[key]


def forget_all(host: Any) -> None:
    """The host rebooted: read every fact afresh."""
    _memo(host).clear()
