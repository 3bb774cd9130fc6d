"""One pyinfra @deploy per concern; deploys read settings, operations take plans and plain arguments."""

from __future__ import annotations

from pathlib import Path

from pyinfra import host

from gpu_llm import layout
from gpu_llm.facts import snapshot
from gpu_llm.settings import Settings, for_host

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "files"
TEMPLATES = ROOT / "templates"


_PROBED = "_gpu_llm_probed_settings"  # the settings the host's probe was built from (once per host and run)


def host_settings() -> Settings:
    """This host's settings (validated once per host and run), with the host snapshot told what to read."""
    s = for_host(host)
    real = snapshot.real_host(host)
    if vars(real).get(_PROBED) is not s:  # every deploy step asks: build the probe once
        snapshot.use(real, layout.probe(s))
        vars(real)[_PROBED] = s
    return s
