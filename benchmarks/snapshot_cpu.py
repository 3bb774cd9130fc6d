"""Host CPU of one snapshot read, the previous form against the current one, side by side on one testbed host.

    sudo .venv/bin/python benchmarks/snapshot_cpu.py [--reps 15]

Brings up one h200-x1 host (GPU_LLM_TESTBED_ID), converges it, then runs, interleaved, the snapshot command as it was
(the driver part asking nvidia-smi itself, Docker's state from `docker ps` + `docker images`) and as it is (one
nvidia-smi, Docker's API on its socket with curl), timing each with bash's `time` on the host (user + sys seconds).
Prints the medians and their ratio; tears the testbed down.
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
from gpu_llm.facts.nvidia import NvidiaDriver  # noqa: E402
from gpu_llm.layout import probe  # noqa: E402
from gpu_llm.settings import from_data  # noqa: E402
from tests.testbed.data import base_data, stage_host  # noqa: E402
from tests.testbed.harness import Host, Testbed  # noqa: E402
from tests.testbed.pyinfra_run import write_inventory  # noqa: E402


def commands() -> tuple[str, str]:
    """(previous form, current form) of the snapshot command for default settings."""
    new = sn.snapshot_command(probe(from_data({})))
    old = new.replace(NvidiaDriver().command(smi=False), NvidiaDriver().command(smi=True)).replace(
        "command -v curl", "command -v no-such-curl")  # the docker CLI branch
    assert old.count("nvidia-smi") > new.count("nvidia-smi") and "no-such-curl" in old
    return old, new


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
        old_cmd, new_cmd = commands()
        old, new = [], []
        for _ in range(args.reps):
            old.append(host_cpu_s(host, old_cmd))
            new.append(host_cpu_s(host, new_cmd))
        mo, mn = statistics.median(old), statistics.median(new)
        print(f"snapshot host CPU, median of {args.reps} interleaved: previous {mo * 1000:.0f} ms, "
              f"current {mn * 1000:.0f} ms, current/previous {mn / mo:.2f}")
    finally:
        tb.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
