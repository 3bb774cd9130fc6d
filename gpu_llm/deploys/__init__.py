"""One pyinfra @deploy per concern; deploys read settings, operations take plans and plain arguments."""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.context import ctx_state

from gpu_llm import layout
from gpu_llm.facts import snapshot
from gpu_llm.settings import Settings, SettingsError, for_host

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "files"
TEMPLATES = ROOT / "templates"
_PREFETCHED = "_gpu_llm_snapshots_prefetched"


def host_settings() -> Settings:
    """This host's settings (validated once per host and run), with the host snapshot told what to read.

    The first call of a run reads every host's snapshot in parallel: pyinfra prepares deploy.py one host after
    another, so a read per host there would cost one round trip per host in a row."""
    s = for_host(host)
    snapshot.use(host, layout.probe(s))
    state = ctx_state.get()  # the real State (pyinfra's `state` is a proxy with vars of its own)
    if not vars(state).get(_PREFETCHED):
        vars(state)[_PREFETCHED] = True
        probes = {}
        for other in state.inventory.get_active_hosts():
            try:
                probes[other] = layout.probe(for_host(other))
            except SettingsError:  # that host's own preflight reports it
                continue
        snapshot.prefetch(state, probes)
    return s
