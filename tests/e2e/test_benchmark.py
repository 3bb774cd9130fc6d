"""No-op re-run benchmark (benchmarks/rerun.py) once on the session testbed: prints b/a and c/b, checks the JSON.

A benchmark, not a timed test: the time targets (b/a <= 1.8, c/b <= 1.3) are reported, never asserted; the count of
remote commands per no-op host (one snapshot read, endpoint check included; target <= 4) is not a timing and is
asserted, and so is that replaying the hosts' reads (b_replay, c_replay) lowers the hosts' CPU of c."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.replay_read import RECORDING
from benchmarks.rerun import run
from tests.testbed.harness import Testbed

pytestmark = pytest.mark.e2e
HOSTS = 3  # CI budget: 3 fresh hosts converge in one run (~1 min); the README figures use --hosts 6 --reps 5
REPS = 3


def test_rerun_benchmark_writes_sane_numbers(testbed: Testbed, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    hosts = [testbed.add_host("h200-x1") for _ in range(HOSTS)]
    out = tmp_path / "rerun.json"
    result = run(testbed, hosts, REPS, out)

    saved = json.loads(out.read_text())
    assert saved["ratios"] == result["ratios"]
    med, times, cmds = saved["median_s"], saved["times_s"], saved["remote_commands"]
    assert all(len(times[k]) == REPS and all(t > 0 for t in times[k]) for k in "abc")
    assert med["a"] < med["b"] < 120, "a no-op deploy must cost more than the floor and finish"
    assert saved["ratios"]["b/a"] == round(med["b"] / med["a"], 2)
    assert saved["ratios"]["c/b"] == round(med["c"] / med["b"], 2)
    # the floor runs exactly its one command; (c) runs (b)'s commands on every host
    assert cmds["a"]["total"] == 1 and len(saved["remote_commands_b"]) == cmds["b"]["total"]
    assert cmds["b"]["hosts"] == 1 and cmds["c"]["hosts"] == HOSTS
    assert cmds["c"]["per_host_max"] == cmds["b"]["total"]
    assert cmds["b_inspect"]["total"] == cmds["b"]["total"] and cmds["a_all"]["hosts"] == HOSTS
    cpu = saved["cpu_s"]["median"]
    assert cpu["c"]["controller"] > 0 and cpu["b"]["controller"] > 0
    assert cpu["c"]["hosts"] is None or cpu["c"]["hosts"] > cpu["b"]["hosts"] >= 0  # 3 hosts' snapshots vs 1
    assert cmds["b"]["total"] <= 4, saved["remote_commands_b"]
    # b_replay / c_replay: the same runs with each host's read replayed from its recording (benchmarks/replay_read.py)
    assert cmds["b_replay"]["total"] == cmds["b"]["total"] and cmds["c_replay"]["hosts"] == HOSTS
    assert f"cat {RECORDING}" in saved["remote_commands_b_replay"][0]
    assert saved["ratios"]["c_replay/b_replay"] == round(med["c_replay"] / med["b_replay"], 2)
    assert cpu["c"]["hosts"] is None or cpu["c_replay"]["hosts"] < cpu["c"]["hosts"]  # the reads' CPU is what it drops
    with capsys.disabled():  # into CI's log even under -q
        print(f"\nrerun benchmark ({HOSTS} hosts, {REPS} reps, medians a {med['a']:.2f} s, b {med['b']:.2f} s, "
              f"c {med['c']:.2f} s; {cmds['b']['total']} remote commands per no-op host):\n"
              f"b/a = {saved['ratios']['b/a']:.2f}\nc/b = {saved['ratios']['c/b']:.2f}\n"
              f"a_all/a = {saved['ratios']['a_all/a']:.2f} (the floor on {HOSTS} hosts vs 1)\n"
              f"b_inspect/b = {saved['ratios']['b_inspect/b']:.2f}, c_inspect/c = {saved['ratios']['c_inspect/c']:.2f} "
              "(pyinfra's own operation-order walk vs gpu_llm/op_order.py)\n"
              f"c_replay/b_replay = {saved['ratios']['c_replay/b_replay']:.2f} (each host's read replayed from a "
              "recording: c/b without the hosts' read CPU on this machine's cores)\n"
              f"CPU of c: controller {saved['cpu_s']['median']['c']['controller']:.2f} s + hosts "
              f"{saved['cpu_s']['median']['c']['hosts'] or 0:.2f} s on {saved['cpu_bound']['cores']} cores: "
              f"c >= {saved['cpu_bound']['c_min_s']:.2f} s, c_min/b = {saved['cpu_bound']['c_min/b']:.2f}", flush=True)
