"""Keeps one host's systemd-nspawn running across guest reboots (nspawn exits 133 when the guest reboots).

Run: python3 -m tests.testbed.supervisor CGROUP_NAME LOGFILE -- systemd-nspawn ...
It first moves itself into cgroup CGROUP_NAME in every mounted hierarchy, so the guest's systemd and
dockerd nest their cgroups there and tear-down can find and remove all of them. Each boot gets a fresh time namespace (guest uptime
from 0). SIGTERM: power the guest off (nspawn turns SIGTERM into a clean shutdown) and exit. A handful of lines: no library does this.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CGROOT = Path("/sys/fs/cgroup")
REBOOT = 133
CLONE_NEWTIME = 0x80


def fresh_boot_clock() -> None:
    """Start the next child in a new time namespace whose CLOCK_BOOTTIME reads ~0: the guest's /proc/uptime
    restarts at each boot (the kernel's uptime never does in a container), which is how pyinfra's
    server.reboot confirms a reboot."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWTIME) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWTIME)")
    up = int(time.clock_gettime(time.CLOCK_BOOTTIME))
    Path("/proc/self/timens_offsets").write_text(f"boottime {1 - up} 0\n")


def cgroup_dirs(name: str) -> list[Path]:
    """Our cgroup in each hierarchy mounted under /sys/fs/cgroup (v1 controllers + unified)."""
    return [h / name for h in sorted(CGROOT.iterdir()) if h.is_dir() and not h.is_symlink()
            and (h / "cgroup.procs").exists()]


def container_root(d: Path) -> Path:
    """Where nspawn roots the container's cgroup namespace: <ours>/payload with systemd's own hierarchies."""
    return d / "payload" if d.parent.name in ("systemd", "unified") else d


def cgroup_binds(name: str) -> list[tuple[Path, Path]]:
    """Bind each hierarchy's container root over the guest's /sys/fs/cgroup/<hierarchy>: the guest's systemd
    and dockerd get writable cgroups that stay inside ours (binding all of /sys/fs/cgroup would let every
    guest write to the machine's root cgroups and trample each other's system.slice)."""
    return [(container_root(d), CGROOT / d.parent.name) for d in cgroup_dirs(name)]


def enter_cgroups(name: str) -> None:
    for d in cgroup_dirs(name):
        container_root(d).mkdir(parents=True, exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):  # a new v1 cpuset is empty until copied from its parent
            if (d / knob).exists() and not (d / knob).read_text().strip():
                (d / knob).write_text((d.parent / knob).read_text())
        (d / "cgroup.procs").write_text(str(os.getpid()))


def main(argv: list[str]) -> int:
    name, logfile, sep, *cmd = argv
    assert sep == "--", "usage: supervisor CGROUP LOG -- nspawn args"
    enter_cgroups(name)
    stop = False
    child: subprocess.Popen | None = None

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    with open(logfile, "ab", buffering=0) as log:
        while True:
            log.write(f"\n== {time.strftime('%F %T')} supervisor: starting nspawn\n".encode())
            fresh_boot_clock()
            child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            while True:
                try:
                    rc = child.wait()
                    break
                except InterruptedError:
                    continue
            log.write(f"== {time.strftime('%F %T')} supervisor: nspawn exited {rc}\n".encode())
            if stop or rc != REBOOT:
                return 0 if stop else rc
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
