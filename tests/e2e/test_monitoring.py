"""Monitoring of the fleet (issue 14) with the real deploy.py: one GPU host and one host in groups `monitoring` and
`gateways` (Prometheus, Grafana and the gateway on one host).

Steps in file order (a failed step skips the rest):
  1. deploy: Prometheus (Ubuntu's real package from the archive stand-in) lists every target up (vLLM instance, node
     exporter, DCGM exporter stand-in, gateway) and has the vLLM series of each instance; every PromQL expression of
     the fleet dashboard is accepted by that Prometheus; Grafana (stand-in from the apt.grafana.com stand-in) holds
     the provisioned dashboards and data source, answers only with the admin password from the setting, which is
     stored 0600 and never printed; Prometheus and Grafana listen on the host's private address, not on 0.0.0.0;
  2. `gpu-llm status` shows every instance, from Prometheus and from the endpoint's /metrics;
  3. a re-run changes nothing and runs at most 2 remote commands per host (-vv; the snapshot, which reads the GPU
     host's endpoint check too, + the gateway's check);
  4. the vLLM container stopped by hand -> `gpu-llm status` shows it down and Prometheus fires VllmInstanceDown;
     started again -> up;
  5. headless Chromium screenshots Prometheus's graph of vllm:num_requests_running while requests run: the plotted
     series' pixels are there, and not on the same page for a metric without data.
  6. the stand-in's hang switch -> the watchdog restarts the container -> its counter reaches Prometheus through the
     node exporter, WatchdogRestartedInstance fires and `gpu-llm status` shows the restart.
Run alone: GPU_LLM_TESTBED_ID=4 .venv/bin/python -m pytest -m e2e tests/e2e/test_monitoring.py -s -q
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from gpu_llm import dashboards
from gpu_llm import monitoring as mon
from tests.e2e.conftest import base_data, prepared_host
from tests.testbed.config import PROJECT
from tests.testbed.harness import Testbed
from tests.testbed.monitoring import import_dcgm_image
from tests.testbed.pyinfra_run import DeployResult, run_deploy, write_inventory

pytestmark = pytest.mark.e2e

API_KEY = "sk-e2e-monitoring-KeyDoNotPrint-24680"
GRAFANA_PASSWORD = "grafana-PassDoNotPrint-97531"
SCRAPE = 5  # monitoring_scrape_interval: targets are up within seconds, the down alert fires after 30 s
# a quick watchdog (as tests/e2e/test_watchdog.py): an idle hang is restarted after 2 failed 3 s probes
GPU_DATA = {"vllm_api_key": API_KEY, "monitoring_scrape_interval": SCRAPE, "watchdog_interval": 2,
            "watchdog_stall_seconds": 8, "watchdog_start_grace": 5, "watchdog_probe_timeout": 3,
            "watchdog_probe_failures": 2}
MON_DATA = {"monitoring_scrape_interval": SCRAPE, "monitoring_grafana_admin_password": GRAFANA_PASSWORD,
            "gateway_health_interval": 2}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


class Setup:
    def __init__(self, testbed: Testbed, tmp: Path) -> None:
        self.testbed, self.tmp = testbed, tmp
        self.mon = testbed.add_host("none")
        self.gpu, data = prepared_host(testbed, "h200-x1", **GPU_DATA)
        import_dcgm_image(self.gpu, "nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04")
        self.data = {**data, self.mon.name: dict(MON_DATA)}
        self.prom = f"http://{self.mon.ip}:9090"
        self.grafana = f"http://{self.mon.ip}:3000"
        self.passed: set[str] = set()
        self.first: DeployResult | None = None

    def deploy(self, *extra: str) -> DeployResult:
        inv = write_inventory(self.tmp / "inventory.py", [self.gpu], self.data, base_data(self.testbed),
                              groups={"gateways": [self.mon], "monitoring": [self.mon]})
        return run_deploy(inv, "deploy.py", *extra)

    def need(self, step: str) -> None:
        if step not in self.passed:
            pytest.skip(f"step {step!r} did not pass; this step builds on it")

    def query(self, expr: str) -> dict:
        r = requests.get(f"{self.prom}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]

    def targets(self) -> list[dict]:
        return requests.get(f"{self.prom}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]

    def status(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gpu_llm.cli", "status", *args, "--json"], cwd=PROJECT,
                              capture_output=True, text=True, timeout=120)

    def chat(self, n: int = 3) -> None:
        for _ in range(n):
            r = requests.post(f"http://{self.gpu.ip}:8000/v1/chat/completions", headers=AUTH, timeout=60,
                              json={"model": "coder", "messages": [{"role": "user", "content": "hi"}],
                                    "max_tokens": 16})
            assert r.status_code == 200, r.text


def _ok(result: DeployResult) -> str:
    import re

    lines = [line for line in result.output.splitlines() if re.search(r"rror|refused|failed|Traceback", line)]
    return f"rc {result.rc}, errors {result.errors}\n" + "\n".join(lines[-40:]) + "\n...\n" + result.output[-2500:]


def _wait(what: str, check, timeout: float = 90, every: float = 2):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (requests.RequestException, AssertionError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


@pytest.fixture(scope="module")
def setup(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return Setup(testbed, tmp_path_factory.mktemp("monitoring"))


def test_1_prometheus_scrapes_every_target_and_grafana_is_provisioned(setup: Setup) -> None:
    result = setup.first = setup.deploy()
    assert result.rc == 0 and result.errors == 0, _ok(result)
    for secret in (API_KEY, GRAFANA_PASSWORD):
        assert secret not in result.output

    def all_up() -> list[dict] | None:
        t = setup.targets()
        return t if len(t) >= 5 and all(x["health"] == "up" for x in t) else None

    targets = _wait("every Prometheus target up", all_up)
    jobs = {(x["labels"]["job"], x["labels"].get("host", "")) for x in targets}
    print("targets:", sorted((x["labels"]["job"], x["scrapeUrl"], x["health"]) for x in targets))
    assert {("vllm", setup.gpu.ip), ("node", setup.gpu.ip), ("dcgm", setup.gpu.ip),
            ("gateway", setup.mon.ip)} <= jobs
    setup.chat()
    series = _wait("vLLM series per instance", lambda: setup.query(
        f'{mon.RUNNING}{{job="vllm"}}')["result"] or None)
    assert {(s["metric"]["host"], s["metric"]["instance_name"]) for s in series} == {(setup.gpu.ip, "coder")}
    tokens = _wait("generation tokens counted", lambda: setup.query(
        f'{mon.GENERATION_TOKENS}{{job="vllm"}} > 0')["result"] or None)
    assert float(tokens[0]["value"][1]) >= 3
    assert setup.query(f"{mon.GPU_UTIL}")["result"], "DCGM exporter series"
    assert setup.query(f"{mon.WATCHDOG_RESTARTS}")["result"], "the watchdog's counter through the node exporter"
    rules = requests.get(f"{setup.prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} >= {"VllmInstanceDown", "WatchdogRestartedInstance",
                                                              "VllmKvCacheFull", "VllmTtftP99High"}
    # every expression of the fleet dashboard is valid PromQL for this Prometheus ($__rate_interval: Grafana's)
    for expr in mon.dashboard_exprs(mon.fleet_dashboard()):
        setup.query(expr.replace("$__rate_interval", "1m"))
    # and of vLLM's own dashboard (its $model_name variable: the served name), with data for the instance
    import re

    vllm_dash = json.loads(dashboards.dashboards()["vllm.json"])
    exported = {re.sub(r"_(bucket|sum|count)$", "", s["metric"]["__name__"])
                for s in setup.query('{job="vllm", __name__=~"vllm:.+"}')["result"]}
    exprs = [e.replace("$__rate_interval", "1m").replace("$model_name", "coder") for e in mon.dashboard_exprs(vllm_dash)]
    expected = [e for e in exprs if {re.sub(r"_(bucket|sum|count)$", "", m)
                                     for m in re.findall(r"vllm:[a-z_]+", e)} <= exported]

    def silent() -> list[str] | None:  # rate() needs two samples in its window: wait for them
        left = [e for e in expected if not setup.query(e)["result"]]
        return None if left else ["none"]

    try:
        _wait("vLLM's dashboard expressions over exported metrics return series", silent, timeout=90, every=5)
    finally:
        print(f"vLLM's dashboard: {len(expected)} of {len(exprs)} expressions use metrics the stand-in exports "
              f"({sorted(exported)})")
    assert len(expected) >= 10

    # Grafana: only with the admin password of the setting
    assert requests.get(f"{setup.grafana}/api/health", timeout=10).json()["database"] == "ok"
    assert requests.get(f"{setup.grafana}/api/search", timeout=10).status_code == 401
    assert requests.get(f"{setup.grafana}/api/search", auth=("admin", "admin"), timeout=10).status_code == 401
    auth = ("admin", GRAFANA_PASSWORD)
    found = requests.get(f"{setup.grafana}/api/search", auth=auth, timeout=10).json()
    assert {mon.FLEET_DASHBOARD_UID, vllm_dash["uid"]} <= {d["uid"] for d in found}, found
    d = requests.get(f"{setup.grafana}/api/dashboards/uid/{mon.FLEET_DASHBOARD_UID}", auth=auth, timeout=10).json()
    assert d["meta"]["provisioned"] and mon.dashboard_problems(d["dashboard"]) == []
    ds = requests.get(f"{setup.grafana}/api/datasources/uid/{mon.DATASOURCE_UID}", auth=auth, timeout=10).json()
    assert ds["url"] == f"http://{setup.mon.ip}:9090"
    # the password: 0600 root, and on a private address only
    st = setup.mon.ssh("stat -c '%a %U' /etc/gpu-llm/grafana.env; ss -Hltn", check=True).stdout
    assert st.splitlines()[0] == "600 root", st
    listening = st.split()
    assert f"{setup.mon.ip}:9090" in listening and f"{setup.mon.ip}:3000" in listening, st
    assert "0.0.0.0:9090" not in listening and "0.0.0.0:3000" not in listening and "*:3000" not in listening, st
    setup.passed.add("deploy")


def test_2_status_shows_every_instance(setup: Setup) -> None:
    setup.need("deploy")
    res = setup.status("--prometheus", setup.prom)
    print(res.stdout, res.stderr)
    doc = json.loads(res.stdout)
    assert res.returncode == 0 and doc["ok"], res.stdout + res.stderr
    (row,) = doc["instances"]
    assert row["host"] == setup.gpu.ip and row["instance"] == "coder" and row["up"] and row["model"] == "coder"
    assert row["restarts"] == 0 and row["running"] is not None and row["kv_cache_usage"] is not None
    res = setup.status("--endpoints", f"http://{setup.gpu.ip}:8000", "--interval", "1")
    doc = json.loads(res.stdout)
    assert res.returncode == 0 and doc["instances"][0]["up"] and doc["instances"][0]["model"] == "coder", res.stdout
    assert doc["instances"][0]["ttft_p99_s"] is not None
    text = subprocess.run([sys.executable, "-m", "gpu_llm.cli", "status", "--prometheus", setup.prom], cwd=PROJECT,
                          capture_output=True, text=True, timeout=60)
    print(text.stdout)
    assert text.returncode == 0 and "coder" in text.stdout and setup.gpu.ip in text.stdout
    setup.passed.add("status")


def test_3_rerun_changes_nothing(setup: Setup) -> None:
    """0 changes, and the monitoring adds no remote command to a no-op run: each host is read by its one snapshot,
    plus the existing end-to-end checks (the GPU host's /health, the gateway's check)."""
    from tests.testbed.pyinfra_run import remote_commands

    setup.need("deploy")
    result = setup.deploy("-vv")
    assert result.rc == 0 and result.changed == 0, _ok(result)
    per_host = remote_commands(result.output)
    for host, commands in per_host.items():
        print(f"no-op re-run, {host}: {len(commands)} remote commands: {[c[:80] for c in commands]}")
    assert set(per_host) == {setup.gpu.ip, setup.mon.ip}, per_host.keys()
    assert all(len(c) <= 2 for c in per_host.values()), {h: len(c) for h, c in per_host.items()}
    for secret in (API_KEY, GRAFANA_PASSWORD):
        assert secret not in result.output
    setup.passed.add("rerun")


def test_4_a_stopped_container_shows_down_and_fires_the_alert(setup: Setup) -> None:
    setup.need("status")
    setup.gpu.ssh("docker stop coder", check=True, timeout=120)
    try:
        def down() -> dict | None:
            res = setup.status("--prometheus", setup.prom)
            doc = json.loads(res.stdout)
            return doc if res.returncode == 1 and not doc["instances"][0]["up"] else None

        doc = _wait("gpu-llm status shows the instance down", down, timeout=60)
        print(json.dumps(doc))

        def firing() -> list[dict] | None:
            alerts = requests.get(f"{setup.prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
            got = [a for a in alerts if a["labels"]["alertname"] == "VllmInstanceDown" and a["state"] == "firing"]
            return got or None

        alerts = _wait("VllmInstanceDown firing", firing, timeout=120)
        assert alerts[0]["labels"]["host"] == setup.gpu.ip and alerts[0]["labels"]["instance_name"] == "coder"
    finally:
        setup.gpu.ssh("docker start coder", timeout=120)
    _wait("the instance up again", lambda: json.loads(setup.status("--prometheus", setup.prom).stdout)["ok"],
          timeout=90)


def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


def _screenshot(url: str, out: Path) -> Path:
    # root in a container: no sandbox; virtual time lets the page's scripts fetch and draw before the shot
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1400,900", "--virtual-time-budget=15000", f"--screenshot={out}", url],
                   capture_output=True, text=True, timeout=120, check=True)
    return out


def _line_pixels(png: Path) -> int:
    """Pixels of the plotted series: the graph draws the first series in red (r well above g and b); the page's
    blue buttons, grey text and the pink "No datapoints found." box are not counted."""
    from PIL import Image

    raw = Image.open(png).convert("RGB").tobytes()
    return sum(1 for i in range(0, len(raw), 3) if raw[i] - max(raw[i + 1], raw[i + 2]) > 100)


def test_5_screenshot_of_the_prometheus_graph_has_data(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> None:
    setup.need("deploy")
    if _chromium() is None:
        pytest.skip("no chromium on this machine (.ci/e2e-setup installs Debian's chromium)")
    import threading
    from urllib.parse import quote

    stop = threading.Event()

    def load() -> None:  # long answers keep requests running across several scrapes
        while not stop.is_set():
            try:
                requests.post(f"http://{setup.gpu.ip}:8000/v1/chat/completions", headers=AUTH, timeout=60,
                              json={"model": "coder", "messages": [{"role": "user", "content": "hi"}],
                                    "max_tokens": 1500, "ignore_eos": True})
            except requests.RequestException:
                time.sleep(0.5)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        _wait("requests running seen by Prometheus", lambda: setup.query(
            f'max_over_time({mon.RUNNING}{{job="vllm"}}[2m]) > 0')["result"] or None, timeout=90)
        time.sleep(3 * SCRAPE)
    finally:
        stop.set()
    out = tmp_path_factory.mktemp("screenshot")

    def graph(expr: str) -> str:
        return f"{setup.prom}/graph?g0.expr={quote(expr)}&g0.tab=0&g0.range_input=5m"

    shot = _screenshot(graph(mon.RUNNING), out / "vllm_num_requests_running.png")
    empty = _screenshot(graph("gpu_llm_no_such_metric"), out / "no_data.png")
    with_data, without = _line_pixels(shot), _line_pixels(empty)
    print(f"screenshot {shot}: {with_data} pixels of the plotted series; the same page without data: {without}")
    assert with_data > 300 and without < 50, (with_data, without)


def test_6_a_watchdog_restart_fires_the_alert_and_shows_in_status(setup: Setup) -> None:
    setup.need("status")
    setup.gpu.ssh("docker exec coder python3 -c \"open('/tmp/hang', 'w').write('')\"", check=True)
    try:
        def restarted() -> list[dict] | None:
            got = setup.query(f'{mon.WATCHDOG_RESTARTS}{{container="coder"}} > 0')["result"]
            return got or None

        _wait("the watchdog's restart counted by Prometheus", restarted, timeout=120)

        def firing() -> list[dict] | None:
            alerts = requests.get(f"{setup.prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "WatchdogRestartedInstance"
                    and a["state"] == "firing"] or None

        alerts = _wait("WatchdogRestartedInstance firing", firing, timeout=60)
        assert alerts[0]["labels"]["host"] == setup.gpu.ip and alerts[0]["labels"]["container"] == "coder"
        doc = _wait("gpu-llm status shows the restart", lambda: (lambda d: d if d["instances"][0]["restarts"]
                                                                 else None)(json.loads(setup.status(
                                                                     "--prometheus", setup.prom).stdout)), timeout=60)
        print(json.dumps(doc))
        assert doc["instances"][0]["restarts"] >= 1
    finally:
        setup.gpu.ssh("docker exec coder python3 -c \"import os; os.path.exists('/tmp/hang') and "
                      "os.remove('/tmp/hang')\"", timeout=60)
