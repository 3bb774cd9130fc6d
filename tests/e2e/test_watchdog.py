"""The hang watchdog on a real deployed host: the stand-in vLLM's hang switch (/tmp/hang in its container) freezes
the engine while /health stays 200, as vLLM does (tests/fixtures/vllm_hang/README.md); the watchdog must restart it.

One host goes through the steps in file order (a failed step skips the rest):
  1. deploy: gpu-llm-watchdog.service active, 0600 config without the key, a re-run changes nothing;
  2. a slow but live engine (2 s per token, stall limit 8 s) with a request running: not restarted;
  3. hang with a request in flight: restarted within stall + interval (+ docker's stop), verify passes after, the
     log (file and journal) names the stall;
  4. hang while idle: the 1-token completion probe fails twice -> restarted, verify passes, the log names the probe;
  5. the budget (2 restarts per hour, both spent): a third hang is left alone and logged CRITICAL.
Run alone: GPU_LLM_TESTBED_ID=5 .venv/bin/python -m pytest -m e2e tests/e2e/test_watchdog.py -s -q
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import module_runner, prepared_host
from tests.testbed.config import PROJECT
from tests.testbed.harness import Host, Testbed

pytestmark = pytest.mark.e2e

API_KEY = "sk-e2e-watchdog-KeyDoNotPrint-24680"
LOG = "/var/log/gpu-llm/watchdog.log"
INTERVAL, STALL, GRACE, PROBE_TIMEOUT, FAILURES, BUDGET = 2, 8, 5, 3, 2, 2
DOCKER_STOP = 10  # docker restart's default stop timeout: python as PID 1 of the stand-in ignores SIGTERM
SETTINGS = {"vllm_api_key": API_KEY, "watchdog_interval": INTERVAL, "watchdog_stall_seconds": STALL,
            "watchdog_start_grace": GRACE, "watchdog_probe_timeout": PROBE_TIMEOUT,
            "watchdog_probe_failures": FAILURES, "watchdog_max_restarts_per_hour": BUDGET}


class Box:
    def __init__(self, testbed: Testbed, host: Host, data: dict[str, Any], tmp: Path) -> None:
        self.testbed, self.host, self.data, self.tmp = testbed, host, data, tmp
        self.run = module_runner(testbed, tmp)
        self.passed: set[str] = set()
        self.url = f"http://{host.ip}:8000"
        self.key_file = tmp / "api-key"
        self.key_file.write_text(API_KEY + "\n")

    def need(self, step: str) -> None:
        if step not in self.passed:
            pytest.skip(f"step {step!r} did not pass; this step builds on it")

    def started_at(self) -> str:
        return self.host.ssh("docker inspect -f '{{.State.StartedAt}}' coder", check=True).stdout.strip()

    def container_file(self, path: str, content: str | None) -> None:
        code = f"open({path!r}, 'w').write({content!r})" if content is not None else \
            f"import os; os.path.exists({path!r}) and os.remove({path!r})"
        self.host.ssh(f"docker exec coder python3 -c \"{code}\"", check=True)

    def log(self) -> str:
        return self.host.ssh(f"cat {LOG}", check=True).stdout

    def metrics(self) -> dict[str, float]:
        from gpu_llm.remote.watchdog import parse_metrics

        return parse_metrics(requests.get(f"{self.url}/metrics", timeout=10).text)

    def wait_restart(self, before: str, limit: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            now = self.started_at()
            if now and now != before:
                return time.monotonic() - t0
            time.sleep(0.5)
        pytest.fail(f"container not restarted within {limit:.0f}s; watchdog log:\n{self.log()[-3000:]}")

    def verify(self) -> dict[str, Any]:
        res = subprocess.run([str(PROJECT / ".venv" / "bin" / "gpu-llm"), "verify", self.url, "--api-key-file",
                              str(self.key_file), "--timeout", "60"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        return json.loads(res.stdout.strip().splitlines()[-1])

    def stream(self, max_tokens: int) -> threading.Thread:
        """A streaming request in the background (its end, normal or cut by a restart, does not matter)."""
        def go() -> None:
            try:
                requests.post(f"{self.url}/v1/chat/completions", timeout=300, stream=True,
                              headers={"Authorization": f"Bearer {API_KEY}"},
                              json={"model": "coder", "messages": [{"role": "user", "content": "go"}],
                                    "max_tokens": max_tokens, "ignore_eos": True, "stream": True}).content
            except requests.RequestException:
                pass

        thread = threading.Thread(target=go, daemon=True)
        thread.start()
        return thread

    def wait_running(self) -> None:
        deadline = time.monotonic() + 30
        while self.metrics().get("vllm:num_requests_running", 0) < 1:
            assert time.monotonic() < deadline, "the request never showed as running in /metrics"
            time.sleep(0.2)

    def out_of_grace(self) -> None:
        time.sleep(GRACE + INTERVAL + 1)


@pytest.fixture(scope="module")
def box(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Box:
    host, data = prepared_host(testbed, "h200-x1", **SETTINGS)
    return Box(testbed, host, data, tmp_path_factory.mktemp("watchdog"))


def test_1_deploy_runs_the_watchdog(box: Box) -> None:
    first = box.run([box.host], box.data)
    assert first.rc == 0 and first.errors == 0, first.output[-3000:] + "\ndocker logs coder:\n" + \
        box.host.ssh("docker logs --tail 40 coder 2>&1").stdout
    assert API_KEY not in first.output
    h = box.host
    assert h.ssh("systemctl is-active gpu-llm-watchdog.service").stdout.strip() == "active"
    assert h.ssh("systemctl is-enabled gpu-llm-watchdog.service").stdout.strip() == "enabled"
    assert h.ssh("stat -c '%a %U' /etc/gpu-llm/watchdog.json", check=True).stdout.split() == ["600", "root"]
    config = json.loads(h.ssh("cat /etc/gpu-llm/watchdog.json", check=True).stdout)
    assert [(i["container"], i["port"], i["model"]) for i in config["instances"]] == [("coder", 8000, "coder")]
    assert config["settings"]["stall_seconds"] == STALL and API_KEY not in json.dumps(config)
    assert API_KEY not in h.ssh("ps -eo args", check=True).stdout
    deadline = time.monotonic() + 20
    while "watching coder:8000" not in h.ssh(f"cat {LOG}").stdout:
        assert time.monotonic() < deadline, h.ssh("journalctl -u gpu-llm-watchdog --no-pager | tail -20").stdout
        time.sleep(0.5)
    again = box.run([box.host], box.data)
    assert again.rc == 0 and again.changed == 0, f"changed {again.changed_ops}\n{again.output[-3000:]}"
    box.passed.add("deploy")


def test_2_a_slow_live_engine_is_not_restarted(box: Box) -> None:
    box.need("deploy")
    box.out_of_grace()
    before = box.started_at()
    box.container_file("/tmp/slow", "2")  # 2 s per token: 11 tokens take 22 s, longer than the 8 s stall limit
    try:
        t0 = time.monotonic()
        r = requests.post(f"{box.url}/v1/chat/completions", timeout=120, headers={"Authorization": f"Bearer {API_KEY}"},
                          json={"model": "coder", "messages": [{"role": "user", "content": "slow"}],
                                "max_tokens": 11, "ignore_eos": True})
        took = time.monotonic() - t0
    finally:
        box.container_file("/tmp/slow", None)
    print(f"[watchdog] slow request: {took:.1f}s at 2 s/token (stall limit {STALL}s), not restarted")
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 11
    assert took > 2 * STALL
    assert box.started_at() == before
    assert "hung" not in box.log()
    box.passed.add("slow")


def test_3_hang_with_a_request_in_flight_is_restarted(box: Box) -> None:
    box.need("slow")
    before = box.started_at()
    box.stream(5000)
    box.wait_running()
    box.container_file("/tmp/hang", "")
    took = box.wait_restart(before, STALL + 2 * INTERVAL + DOCKER_STOP + 15)
    log = box.log()
    print(f"[watchdog] hang with a request in flight: restarted {took:.1f}s after the switch "
          f"(stall {STALL}s + interval {INTERVAL}s + docker stop up to {DOCKER_STOP}s)")
    assert re.search(r"hung: stall: vllm:num_requests_running=[1-9]", log), log[-3000:]
    assert "restarting it (docker restart)" in log
    assert took <= STALL + 2 * INTERVAL + DOCKER_STOP + 5
    journal = box.host.ssh("journalctl -u gpu-llm-watchdog.service --no-pager", check=True).stdout
    assert re.search(r"hung: stall: vllm:num_requests_running=[1-9]", journal), journal[-3000:]
    result = box.verify()
    assert result["ok"] and result["model"] == "coder"
    box.passed.add("stall")


def test_4_hang_while_idle_is_found_by_the_probe(box: Box) -> None:
    box.need("stall")
    box.out_of_grace()
    before = box.started_at()
    assert box.metrics()["vllm:num_requests_running"] == 0
    box.container_file("/tmp/hang", "")
    limit = FAILURES * (INTERVAL + PROBE_TIMEOUT) + INTERVAL + DOCKER_STOP + 15
    took = box.wait_restart(before, limit)
    log = box.log()
    print(f"[watchdog] idle hang: restarted {took:.1f}s after the switch ({FAILURES} probes x "
          f"({INTERVAL}s + {PROBE_TIMEOUT}s timeout) + docker stop)")
    assert f"liveness probe: {FAILURES} consecutive" in log, log[-3000:]
    assert box.verify()["ok"]
    box.passed.add("idle")


def test_5_the_restart_budget_is_respected(box: Box) -> None:
    box.need("idle")
    box.out_of_grace()
    before = box.started_at()
    box.container_file("/tmp/hang", "")
    try:
        deadline = time.monotonic() + FAILURES * (INTERVAL + PROBE_TIMEOUT) + DOCKER_STOP + 20
        while "restart budget spent" not in box.log():
            assert time.monotonic() < deadline, box.log()[-3000:]
            time.sleep(1)
        time.sleep(DOCKER_STOP + INTERVAL)
        assert box.started_at() == before, "restarted past the budget"
        log = box.log()
        assert "CRITICAL" in log and f"watchdog_max_restarts_per_hour={BUDGET}" in log
        assert log.count("restarting it (docker restart)") == BUDGET
        print("[watchdog] budget: " + next(line for line in log.splitlines() if "CRITICAL" in line))
    finally:
        box.container_file("/tmp/hang", None)
