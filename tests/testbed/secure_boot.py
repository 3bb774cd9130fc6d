"""Secure Boot per testbed host: `mokutil --sb-state` answers as on a UEFI host, and the marker the NVIDIA module
stand-in reads (repos.MODULE_UNIT): with Secure Boot on, a module that is not signed (NVIDIA's DKMS build) is
rejected at load as the kernel does ("Key was rejected by service"); Canonical's signed modules
(linux-modules-nvidia-*, tests/testbed/ubuntu_restricted.py) load.

Own stand-in: the guests run this machine's kernel, whose Secure Boot state is not the guest's to set.
"""

from __future__ import annotations

from pathlib import Path

MARKER = "etc/gpu-llm-testbed/secure-boot"
# mokutil(1) --sb-state prints "SecureBoot enabled" / "SecureBoot disabled" (github.com/lcp/mokutil, src/mokutil.c)
MOKUTIL = """#!/bin/sh
# gpu-llm testbed stand-in for mokutil: only --sb-state
case "$1" in
  --sb-state) echo "SecureBoot {state}";;
  *) echo "mokutil stand-in: only --sb-state is supported" >&2; exit 1;;
esac
"""


def install_mokutil(root: Path, enabled: bool) -> None:
    dest = root / "usr/bin/mokutil"
    dest.write_text(MOKUTIL.format(state="enabled" if enabled else "disabled"))
    dest.chmod(0o755)


def install(root: Path) -> None:
    """Secure Boot on for the host rooted at `root`."""
    install_mokutil(root, enabled=True)
    marker = root / MARKER
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("enabled\n")
