"""benchmarks/replay_read.py: the benchmark's aid that records each host's snapshot read and replays it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import replay_read
from gpu_llm.facts import snapshot
from gpu_llm.facts.snapshot import HostSnapshot, Probe, parse_snapshot

PROJECT = Path(__file__).resolve().parents[2]


def sh(command: str) -> str:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout


def test_record_prints_the_real_read_and_keeps_it_and_replay_prints_the_same(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    probe = Probe(model_dir=str(model), download_unit="gpu-llm-test.service", hf_venv=str(tmp_path / "venv"))
    recording = tmp_path / "recording"
    real = sh(snapshot.snapshot_command(probe))

    recorded = sh(replay_read.wrap("record", snapshot.snapshot_command, str(recording))(probe))
    replayed = sh(replay_read.wrap("replay", snapshot.snapshot_command, str(recording))(probe))

    assert recorded == recording.read_text() == replayed
    # the same read as the real command's (this machine's state; the df line may move between the two reads)
    assert parse_snapshot(recorded.splitlines()).model == parse_snapshot(real.splitlines()).model
    assert parse_snapshot(replayed.splitlines()).model.sizes == {"config.json": 2}


def test_replay_reads_nothing_but_the_recording(tmp_path: Path) -> None:
    probe = Probe(model_dir="/m", download_unit="d.service", hf_venv="/v")
    assert replay_read.wrap("replay", snapshot.snapshot_command, "/run/x y")(probe) == "cat '/run/x y'"
    with pytest.raises(subprocess.CalledProcessError):  # no recording: the run fails, it does not read nothing
        sh(replay_read.wrap("replay", snapshot.snapshot_command, str(tmp_path / "absent"))(probe))


def test_the_fact_looks_the_command_up_at_each_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """replay_read replaces snapshot_command in its module: the fact must not hold its own reference."""
    monkeypatch.setattr(snapshot, "snapshot_command", replay_read.wrap("replay", snapshot.snapshot_command))
    assert HostSnapshot().command(model_dir="/m", download_unit="d.service", hf_venv="/v") == \
        f"cat {replay_read.RECORDING}"


def test_an_unknown_mode_names_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="record, replay"):
        replay_read.wrap("reply", snapshot.snapshot_command)
    proc = subprocess.run([sys.executable, str(PROJECT / "benchmarks" / "replay_read.py"), "deploy.py"],
                          capture_output=True, text=True, cwd=PROJECT)
    assert proc.returncode == 2 and "record|replay" in proc.stderr
