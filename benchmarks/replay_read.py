"""pyinfra with each host's snapshot read recorded on the host, or replayed from that recording: a measuring aid.

    .venv/bin/python benchmarks/replay_read.py record|replay -y INVENTORY deploy.py

benchmarks/rerun.py uses it to split a no-op re-run's cost on this machine, where the testbed hosts run on the
controller's own cores. `record` runs the real read (gpu_llm.facts.snapshot.snapshot_command) and keeps its output on
the host in RECORDING (tmpfs: gone at reboot). `replay` has each host print that recording instead of reading, one
`cat`: the controller parses the same output and runs the same operations, while the hosts' own work drops to their
SSH session. c/b with and without it shows what the controller adds per host apart from what the hosts' reads add.
Never for a deploy: a replayed run decides on the recorded state, not the host's.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Callable

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))  # run as a script: gpu_llm from this checkout, as deploy.py imports it

from gpu_llm.facts import snapshot  # noqa: E402

RECORDING = "/run/gpu-llm-bench-snapshot"
MODES = ("record", "replay")


def wrap(mode: str, real: Callable[[snapshot.Probe], str], recording: str = RECORDING) -> Callable[[snapshot.Probe], str]:
    """snapshot_command for `mode`: the real read teeing its output into `recording`, or a cat of it."""
    path = shlex.quote(recording)
    if mode == "record":
        return lambda probe: f"{{ {real(probe)}; }} | tee {path}"  # the whole read's output, whatever its shape
    if mode == "replay":
        return lambda probe: f"cat {path}"
    raise ValueError(f"mode {mode!r}: allowed values are {', '.join(MODES)}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in MODES:
        print(f"usage: replay_read.py {{{'|'.join(MODES)}}} PYINFRA-ARGS...", file=sys.stderr)
        return 2
    # HostSnapshot.command looks snapshot_command up in its module at each read: replacing it there is enough
    snapshot.snapshot_command = wrap(argv[0], snapshot.snapshot_command)
    from pyinfra_cli.main import main as pyinfra_main

    sys.argv = ["pyinfra", *argv[1:]]
    return pyinfra_main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
