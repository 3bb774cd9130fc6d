"""Wheels the offline hosts pip-install into the deploy's venv (CPython 3.12, manylinux x86_64), cached."""

from __future__ import annotations

import sys
from pathlib import Path

from .config import Config
from .proc import run, timed

# the hf venv's, then the gateway's router (gateway_router_requirement's default)
REQUIREMENTS = ["huggingface-hub>=1.0,<3", "requests", "vllm-router==0.1.17"]
# Ubuntu 24.04 ships glibc 2.39; list the manylinux tags pip may pick for it.
PLATFORMS = ["manylinux_2_39_x86_64", "manylinux_2_34_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64"]


def ensure_wheels(cfg: Config) -> Path:
    """Download (once) REQUIREMENTS and their dependencies for the hosts' Python into the cache."""
    dest = cfg.cache / "wheels"
    done = dest / ".complete"
    if done.exists() and done.read_text() == "\n".join(REQUIREMENTS) + "\n":
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with timed("pip download wheels for the hosts"):
        run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.12",
             "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none",
             *(f"--platform={p}" for p in PLATFORMS), "-d", str(dest), *REQUIREMENTS], timeout=900)
    (dest / ".complete").write_text("\n".join(REQUIREMENTS) + "\n")
    return dest
