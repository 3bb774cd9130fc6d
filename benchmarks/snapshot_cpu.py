"""Host CPU of one snapshot read, whole and part by part, on one converged testbed host.

    sudo .venv/bin/python benchmarks/snapshot_cpu.py [--reps 15]

Brings up one h200-x1 host (GPU_LLM_TESTBED_ID), converges it, then runs, interleaved per repetition, the whole
snapshot command and each of its parts (after the prelude the parts share), timing each with bash's `time` on the
host: user + sys seconds of the shell and the processes it starts. Not counted: what systemd, dockerd or the vLLM
endpoint do on its behalf, and sshd (benchmarks/rerun.py's CPU accounting reads the host's whole cgroup). Prints the
medians, largest first; tears the testbed down.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the project root on sys.path

from benchmarks.rerun import pyinfra  # noqa: E402
from gpu_llm.facts import snapshot as sn  # noqa: E402
from gpu_llm.layout import probe  # noqa: E402
from gpu_llm.settings import from_data  # noqa: E402
from tests.testbed.data import base_data, stage_host  # noqa: E402
from tests.testbed.harness import Host, Testbed  # noqa: E402
from tests.testbed.pyinfra_run import write_inventory  # noqa: E402


def commands(settings: dict | None = None) -> dict[str, str]:
    """{"whole": the snapshot command, "prelude": its prelude, <part>: prelude + that part} for `settings`."""
    p = probe(from_data(settings or {}))
    return {"whole": sn.snapshot_command(p), "prelude": sn.PRELUDE,
            **{name: f"{sn.PRELUDE}; ( {command} )" for name, command in sn.snapshot_parts(p).items()}}


def host_cpu_s(host: Host, command: str) -> float:
    host.ssh("cat > /tmp/gpu-llm-snapshot.sh", input=command, check=True)
    res = host.ssh("bash -c 'TIMEFORMAT=\"%U %S\"; time sh /tmp/gpu-llm-snapshot.sh >/dev/null 2>&1'")
    user, system = res.stderr.strip().splitlines()[-1].split()
    return float(user) + float(system)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=15)
    args = p.parse_args(argv)
    tb = Testbed()
    try:
        (host,) = tb.up(["h200-x1"])
        inv = write_inventory(Path(tempfile.mkdtemp(prefix="gpu-llm-snapcpu-")) / "inventory.py", [host],
                              {host.name: stage_host(tb, host)}, base_data(tb))
        pyinfra(inv, "deploy.py")
        cmds = commands()
        times: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(args.reps):
            for name, command in cmds.items():
                times[name].append(host_cpu_s(host, command))
        med = {name: statistics.median(v) for name, v in times.items()}
        print(f"host CPU of one snapshot read, medians of {args.reps} interleaved repetitions "
              "(a part's figure includes the prelude's):")
        for name, value in sorted(med.items(), key=lambda kv: -kv[1]):
            print(f"  {name:14s} {value * 1000:6.1f} ms")
    finally:
        tb.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
