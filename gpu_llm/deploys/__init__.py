"""One pyinfra @deploy per concern; deploys read settings, operations take explicit arguments."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "files"
TEMPLATES = ROOT / "templates"
