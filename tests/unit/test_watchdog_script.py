"""The hang watchdog (gpu_llm/remote/watchdog.py): metric parsing on real vLLM output, its decisions, and one
watchdog against the stand-in vLLM with its hang switch (a fake `docker` on PATH records the restarts)."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
import requests

from gpu_llm.remote import watchdog as wd
from tests.unit.test_fake_vllm import env, launch, model_dir  # noqa: F401 -- fixtures

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vllm_hang"
LIMITS = {"stall_seconds": 30, "start_grace": 60, "probe_failures": 2, "max_restarts_per_hour": 2}


def test_metrics_of_a_real_vllm_frozen_engine() -> None:
    """vLLM 0.26.0 on an H200: under load 8 running; frozen (SIGSTOP) the same 8 and the counter stops."""
    load = wd.parse_metrics((FIXTURES / "metrics_load.txt").read_text())
    stopped = wd.parse_metrics((FIXTURES / "metrics_stopped.txt").read_text())
    assert load[wd.RUNNING] == 8.0 and stopped[wd.RUNNING] == 8.0
    assert load[wd.GENERATED] == 3280.0 and stopped[wd.GENERATED] == 3288.0
    # labelled series are summed over their labels (request_success_total has one per finished_reason)
    assert stopped["vllm:request_success_total"] == 4.0


def test_started_at_parsing() -> None:
    assert wd.parse_started_at("2026-12-01T17:00:00.5Z") == pytest.approx(1796144400.5)
    assert wd.parse_started_at("2026-12-01T18:00:00+01:00") == pytest.approx(1796144400.0)
    assert wd.parse_started_at("0001-01-01T00:00:00Z") is None
    assert wd.parse_started_at("garbage") is None


def obs(now: float, running: float | None = 0, tokens: float = 0, started: float = 0.0, probe: bool | None = None,
        up: bool = True) -> wd.Observation:
    metrics = None if running is None else {wd.RUNNING: running, wd.GENERATED: tokens}
    return wd.Observation(now, up, started, metrics, probe, "" if probe is not False else "timeout")


def test_a_stall_with_requests_running_restarts_after_stall_seconds() -> None:
    t = wd.Track()
    assert wd.decide(t, obs(100, 2, 50), **LIMITS)[0] == "ok"
    assert wd.decide(t, obs(110, 2, 80), **LIMITS)[0] == "ok"  # moving
    assert wd.decide(t, obs(130, 2, 80), **LIMITS)[0] == "ok"  # still for 20 s < 30
    action, reason = wd.decide(t, obs(140, 2, 80), **LIMITS)
    assert action == "restart" and "stall" in reason and "stuck at 80" in reason and "30s" in reason


def test_slow_but_moving_tokens_are_not_a_stall() -> None:
    t = wd.Track()
    for i in range(20):  # one token every 25 s, stall limit 30 s: slow, alive
        assert wd.decide(t, obs(100 + 25 * i, 1, i), **LIMITS)[0] == "ok"


def test_idle_hang_needs_consecutive_probe_failures() -> None:
    t = wd.Track()
    assert wd.needs_probe(t, obs(100), 60)
    assert not wd.needs_probe(t, obs(100, running=3), 60)
    assert wd.needs_probe(t, obs(100, running=None), 60)  # /metrics silent
    assert wd.decide(t, obs(100, probe=False), **LIMITS)[0] == "ok"  # 1 of 2
    assert wd.decide(t, obs(110, probe=True), **LIMITS)[0] == "ok"  # reset
    assert wd.decide(t, obs(120, probe=False), **LIMITS)[0] == "ok"
    action, reason = wd.decide(t, obs(130, probe=False), **LIMITS)
    assert action == "restart" and "liveness probe" in reason and "2 consecutive" in reason


def test_grace_after_a_start_and_stopped_containers_are_left_alone() -> None:
    t = wd.Track()
    assert not wd.needs_probe(t, obs(30, started=0.0), 60)
    assert wd.decide(t, obs(30, 2, 0, started=0.0), **LIMITS)[0] == "skip"
    assert wd.decide(t, obs(500, 2, 0, up=False), **LIMITS) == ("skip", wd.decide(t, obs(501, up=False), **LIMITS)[1])
    assert "not running" in wd.decide(t, obs(502, up=False), **LIMITS)[1]


def test_a_new_start_forgets_the_old_engine() -> None:
    t = wd.Track()
    wd.decide(t, obs(100, 2, 80), **LIMITS)
    wd.decide(t, obs(125, 2, 80), **LIMITS)
    assert wd.decide(t, obs(200, 2, 80, started=120.0), **LIMITS)[0] == "ok"  # restarted at 120: clock reset
    assert wd.decide(t, obs(235, 2, 80, started=120.0), **LIMITS)[0] == "restart"


def test_the_restart_budget_per_hour() -> None:
    t = wd.Track(restarts=[1000.0, 2000.0])
    for n in range(3):
        wd.decide(t, obs(3000 + 10 * n, probe=False), **LIMITS)
    action, reason = wd.decide(t, obs(3030, probe=False), **LIMITS)
    assert action == "budget" and "NOT restarting" in reason and "watchdog_max_restarts_per_hour=2" in reason
    t.restarts = [1000.0, 2000.0]
    assert wd.decide(t, obs(4700, probe=False), **LIMITS)[0] == "restart"  # the 1000 one is older than an hour


# ---- the watchdog process against the stand-in vLLM ---------------------------------------------------------


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`docker inspect` answers running + a start time from a file; `docker restart` records itself, removes the
    hang file (what the stand-in does when it starts) and sets a new start time."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "docker"
    script.write_text(f"""#!/bin/sh
case "$1" in
  inspect) echo "true $(cat {tmp_path}/started)";;
  restart) echo "$2" >> {tmp_path}/restarts; rm -f {tmp_path}/hang; date -u +%Y-%m-%dT%H:%M:%S.000000000Z > {tmp_path}/started;;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "started").write_text("2020-01-01T00:00:00.000000000Z\n")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return tmp_path


def run_watchdog(cfg_path: Path, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        config = json.loads(cfg_path.read_text())
        tracks: dict[str, wd.Track] = {}
        while not stop.is_set():
            wd.tick(config, tracks, config["state_file"])
            time.sleep(config["settings"]["interval"])

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("in_flight", [True, False])
def test_watchdog_restarts_the_hung_stand_in(launch, fake_docker: Path, in_flight: bool) -> None:  # noqa: F811
    hang = fake_docker / "hang"
    server = launch("--served-model-name", "coder", "--api-key", "k3y",
                    extra_env={"FAKE_VLLM_HANG_FILE": str(hang), "FAKE_VLLM_TOKEN_DELAY": "0.05"})
    port = int(server.url.rsplit(":", 1)[1])
    env_file = fake_docker / "coder.env"
    env_file.write_text("VLLM_API_KEY=k3y\n")
    log_file = fake_docker / "watchdog.log"
    cfg = fake_docker / "watchdog.json"
    cfg.write_text(json.dumps({
        "instances": [{"container": "coder", "port": port, "model": "coder", "env_file": str(env_file)}],
        "settings": {"interval": 0.3, "stall_seconds": 2, "start_grace": 0, "probe_timeout": 1,
                     "probe_failures": 2, "max_restarts_per_hour": 1},
        "log_file": str(log_file), "state_file": str(fake_docker / "state.json")}))
    wd.setup_logging(str(log_file))
    stop = threading.Event()
    try:
        if in_flight:  # a long streaming request, then the switch: running stays 1, tokens stop
            def stream() -> None:
                try:
                    server.post("/v1/chat/completions", {
                        "model": "coder", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400,
                        "ignore_eos": True, "stream": True}, stream=True).content
                except requests.RequestException:
                    pass  # the server is stopped at the end of the test

            threading.Thread(target=stream, daemon=True).start()
            time.sleep(0.5)
            metrics = wd.parse_metrics(requests.get(server.url + "/metrics", timeout=5).text)
            assert metrics[wd.RUNNING] == 1 and metrics[wd.GENERATED] > 0
        hang.touch()
        frozen = wd.parse_metrics(requests.get(server.url + "/metrics", timeout=5).text)
        assert requests.get(server.url + "/health", timeout=5).status_code == 200  # /health says nothing
        run_watchdog(cfg, stop)
        deadline = time.monotonic() + 15
        while not (fake_docker / "restarts").exists():
            assert time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.1)
        assert wd.parse_metrics(requests.get(server.url + "/metrics", timeout=5).text)[wd.GENERATED] \
            >= frozen[wd.GENERATED]
        text = log_file.read_text()
        assert ("stall: vllm:num_requests_running=1" if in_flight else "liveness probe: 2 consecutive") in text, text
        assert "restarting it (docker restart)" in text
        # the budget (1 per hour) is spent: a second hang is left for a human, loudly
        time.sleep(0.5)
        hang.touch()
        deadline = time.monotonic() + 10
        while "restart budget spent" not in log_file.read_text():
            assert time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.1)
        assert (fake_docker / "restarts").read_text().split() == ["coder"]
        assert "CRITICAL" in log_file.read_text()
        assert json.loads((fake_docker / "state.json").read_text())["restarts"]["coder"]
    finally:
        stop.set()
        hang.unlink(missing_ok=True)
        for handler in list(wd.log.handlers):
            wd.log.removeHandler(handler)


def test_the_stand_in_exports_moving_vllm_metrics_and_removes_the_switch_at_start(launch, tmp_path: Path) -> None:  # noqa: F811
    hang = tmp_path / "hang"
    hang.touch()
    server = launch("--served-model-name", "coder", extra_env={"FAKE_VLLM_HANG_FILE": str(hang)})
    assert not hang.exists()
    before = wd.parse_metrics(requests.get(server.url + "/metrics", timeout=5).text)
    r = server.post("/v1/chat/completions", {"model": "coder", "messages": [{"role": "user", "content": "x"}],
                                             "max_tokens": 7, "ignore_eos": True}, key=None)
    assert r.status_code == 200
    after = wd.parse_metrics(requests.get(server.url + "/metrics", timeout=5).text)
    assert after[wd.GENERATED] - before[wd.GENERATED] == 7
    assert after[wd.RUNNING] == 0 and after["vllm:request_success_total"] == before["vllm:request_success_total"] + 1
    assert after["vllm:prompt_tokens_total"] > before["vllm:prompt_tokens_total"]


def test_watchdog_settings_are_checked_before_any_change() -> None:
    from gpu_llm.settings import SettingsError, from_data

    s = from_data({})
    assert (s.watchdog_enabled, s.watchdog_interval, s.watchdog_stall_seconds, s.watchdog_start_grace) == \
        (True, 15, 120, 600)
    with pytest.raises(SettingsError) as err:
        from_data({"watchdog_interval": 30, "watchdog_stall_seconds": 40})
    assert err.value.key == "watchdog_stall_seconds" and "at least twice watchdog_interval=30" in str(err.value)
    with pytest.raises(SettingsError) as err:
        from_data({"watchdog_stall_second": 60, "watchdog_enabled": "yes"})
    assert "did you mean 'watchdog_stall_seconds'" in str(err.value)
    assert "watchdog_enabled='yes' is invalid: expected true or false" in str(err.value)
    assert from_data({"watchdog_enabled": False, "watchdog_interval": 30, "watchdog_stall_seconds": 40})


def test_restart_counter_for_the_node_exporter_textfile(tmp_path):
    """The counter survives a restart of the watchdog (state file) and lands in the textfile directory only when
    that directory exists (the node exporter installed)."""
    from prometheus_client.parser import text_string_to_metric_families

    state = str(tmp_path / "state.json")
    tracks = {"coder": wd.Track(restarts=[1.0], total=3), "coder-b": wd.Track()}
    wd.save_state(state, tracks)
    assert wd.load_totals(state) == {"coder": 3, "coder-b": 0}
    missing = tmp_path / "absent" / "gpu-llm-watchdog.prom"
    wd.write_metrics(str(missing), tracks)
    assert not missing.parent.exists()
    prom = tmp_path / "gpu-llm-watchdog.prom"
    wd.write_metrics(str(prom), tracks)
    (family,) = text_string_to_metric_families(prom.read_text())
    assert family.name == "gpu_llm_watchdog_restarts" and family.type == "counter"
    assert {s.labels["container"]: s.value for s in family.samples} == {"coder": 3.0, "coder-b": 0.0}
