"""One endpoint for the fleet: two GPU hosts and one gateway host (inventory group `gateways`) with the real deploy.py.

Steps in file order (a failed step skips the rest):
  1. deploy: vllm-router runs on the gateway, requests through it succeed and reach both backends; no key -> 401;
  2. failover: one backend's container stopped by hand -> after the health interval every request succeeds through
     the other (failed requests during the switch counted and printed); /v1/models works meanwhile; it comes back
     -> it takes traffic again;
  3. a third GPU host added -> the gateway's unit is rewritten and restarted, the new host takes traffic; a re-run
     changes nothing;
  4. `gpu-llm bench` through the gateway with 2 backends vs 1 (each stand-in runs --max-num-seqs 2 at once): the
     throughput ratio is printed;
  5. HTTPS with a user's certificate (gateway_tls_cert/key; HAProxy in front of the router): requests, streaming,
     401 and `gpu-llm verify --cacert` over https, no plain HTTP left on the port, a re-run changes nothing; unset
     -> plain HTTP again and the HTTPS front removed (with gateway_bind: listening on the gateway's address only);
  6. a GPU host outside the inventory named in gateway_extra_backends takes traffic.
Run alone: GPU_LLM_TESTBED_ID=5 .venv/bin/python -m pytest -m e2e tests/e2e/test_gateway.py -s -q
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import base_data, prepared_host
from tests.testbed.config import PROJECT
from tests.testbed.harness import Host, Testbed
from tests.testbed.pyinfra_run import DeployResult, run_deploy, write_inventory

pytestmark = pytest.mark.e2e

API_KEY = "sk-e2e-gateway-KeyDoNotPrint-13579"
HEALTH = 2  # gateway_health_interval
SEQS = 2  # vllm_max_num_seqs: the stand-in runs 2 requests at once, like vLLM's scheduler (the rest wait)
GPU_DATA = {"vllm_api_key": API_KEY, "vllm_max_num_seqs": SEQS}
GW_DATA = {"gateway_health_interval": HEALTH}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


class Fleet:
    def __init__(self, testbed: Testbed, tmp: Path) -> None:
        self.testbed, self.tmp = testbed, tmp
        self.gpus: list[Host] = []
        self.data: dict[str, dict] = {}
        self.gw = testbed.add_host("none")
        self.data[self.gw.name] = dict(GW_DATA)
        self.url = f"http://{self.gw.ip}:8080"
        self.passed: set[str] = set()
        self.key_file = tmp / "api-key"
        self.key_file.write_text(API_KEY + "\n")

    def add_gpu_host(self) -> Host:
        host, data = prepared_host(self.testbed, "h200-x1", **GPU_DATA)
        self.gpus.append(host)
        self.data.update(data)
        return host

    def deploy(self, *extra: str) -> DeployResult:
        inv = write_inventory(self.tmp / "inventory.py", self.gpus, self.data, base_data(self.testbed),
                              groups={"gateways": [self.gw]})
        return run_deploy(inv, "deploy.py", *extra)

    def need(self, step: str) -> None:
        if step not in self.passed:
            pytest.skip(f"step {step!r} did not pass; this step builds on it")

    def chat(self, key: str | None = API_KEY, timeout: float = 30) -> requests.Response:
        return requests.post(f"{self.url}/v1/chat/completions", timeout=timeout,
                             headers={"Authorization": f"Bearer {key}"} if key else {},
                             json={"model": "coder", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})

    def served(self, host: Host) -> float:
        """Requests the host's stand-in has finished (vllm:request_success_total over its reasons)."""
        from gpu_llm.remote.watchdog import parse_metrics

        try:
            text = requests.get(f"http://{host.ip}:8000/metrics", timeout=5).text
        except requests.RequestException:
            return -1.0
        return parse_metrics(text).get("vllm:request_success_total", 0.0)


def _ok(result: DeployResult) -> str:
    import re

    lines = [line for line in result.output.splitlines()
             if re.search(r"rror|refused|failed|Traceback|No such", line)]
    return f"rc {result.rc}, errors {result.errors}\n" + "\n".join(lines[-40:]) + "\n...\n" + result.output[-1500:]


@pytest.fixture(scope="module")
def fleet(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    f = Fleet(testbed, tmp_path_factory.mktemp("gateway"))
    f.add_gpu_host()
    f.add_gpu_host()
    return f


def test_0_a_gateway_without_keyed_gpu_hosts_is_refused_before_any_change(fleet: Fleet) -> None:
    for h in fleet.gpus:
        fleet.data[h.name].pop("vllm_api_key")
    try:
        result = fleet.deploy()
    finally:
        for h in fleet.gpus:
            fleet.data[h.name]["vllm_api_key"] = API_KEY
    assert result.rc != 0 and result.changed == 0, _ok(result)
    assert "every GPU host needs vllm_api_key or vllm_api_key_file" in result.output, result.output[-3000:]
    assert fleet.gw.ssh("test -e /etc/systemd/system/gpu-llm-gateway.service").returncode == 1
    assert all(h.ssh("test -e /etc/gpu-llm").returncode == 1 for h in fleet.gpus)


def test_1_requests_through_the_gateway_reach_both_backends(fleet: Fleet) -> None:
    result = fleet.deploy()
    assert result.rc == 0 and result.errors == 0, _ok(result) + "\n" + fleet.gw.ssh(
        "systemctl status gpu-llm-gateway --no-pager; journalctl -u gpu-llm-gateway --no-pager | tail -40").stdout
    assert API_KEY not in result.output
    assert "gpu-llm-gateway.service" in fleet.gw.ssh("systemctl list-units --state=active --no-pager").stdout
    assert API_KEY not in fleet.gw.ssh("ps -eo args", check=True).stdout
    assert API_KEY not in fleet.gw.ssh("cat /etc/systemd/system/gpu-llm-gateway.service", check=True).stdout
    assert fleet.gw.ssh("stat -c '%a %U' /etc/gpu-llm/gateway-auth.header", check=True).stdout.split() == ["600", "root"]
    before = [fleet.served(h) for h in fleet.gpus]
    answers = [fleet.chat() for _ in range(8)]
    assert [r.status_code for r in answers] == [200] * 8, [r.text for r in answers]
    after = [fleet.served(h) for h in fleet.gpus]
    assert all(a > b for a, b in zip(after, before)), f"both backends should serve: {before} -> {after}"
    assert fleet.chat(key=None).status_code == 401
    assert fleet.chat(key="wrong-key-123456").status_code == 401
    models = requests.get(f"{fleet.url}/v1/models", headers=AUTH, timeout=10)
    assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["coder"]
    assert "gateway on http://127.0.0.1:8080 answers for coder (2 backend(s))" in result.output
    verify = subprocess.run([str(PROJECT / ".venv" / "bin" / "gpu-llm"), "verify", fleet.url, "--api-key-file",
                             str(fleet.key_file), "--timeout", "30"], capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and json.loads(verify.stdout.splitlines()[-1])["ok"], verify.stdout + verify.stderr
    fleet.passed.add("deploy")


def test_2_failover_when_a_backend_stops_and_back(fleet: Fleet) -> None:
    fleet.need("deploy")
    down = fleet.gpus[0]
    stop = threading.Event()
    log: list[tuple[float, int]] = []

    def load() -> None:
        while not stop.is_set():
            try:
                status = fleet.chat(timeout=20).status_code
            except requests.RequestException:
                status = 0
            log.append((time.monotonic(), status))
            time.sleep(0.05)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    time.sleep(2)
    t_stop = time.monotonic()
    down.ssh("docker stop -t 1 coder", check=True)
    time.sleep(HEALTH * 3 + 2)
    models = requests.get(f"{fleet.url}/v1/models", headers=AUTH, timeout=10)
    time.sleep(3)
    stop.set()
    thread.join(30)
    during = [s for t, s in log if t_stop <= t < t_stop + HEALTH * 2 + 3]
    settled = [s for t, s in log if t >= t_stop + HEALTH * 2 + 3]
    failed = sum(1 for s in during + settled if s != 200)
    print(f"[gateway] one backend stopped: {failed} failed of {len(during) + len(settled)} requests after the stop "
          f"({sum(1 for s in during if s != 200)} in the first {HEALTH * 2 + 3}s, health interval {HEALTH}s); "
          f"failed statuses: {sorted({s for s in during + settled if s != 200})}")
    assert settled and all(s == 200 for s in settled), settled
    assert models.status_code == 200, f"/v1/models with a backend down: {models.status_code} {models.text[:300]}"
    down.ssh("docker start coder", check=True)
    before = fleet.served(down)
    deadline = time.monotonic() + 60
    while fleet.served(down) <= max(before, 0):
        assert time.monotonic() < deadline, "the restarted backend never took traffic again"
        assert fleet.chat().status_code == 200
        time.sleep(0.2)
    fleet.passed.add("failover")


def test_3_a_third_gpu_host_is_added_to_the_gateway(fleet: Fleet) -> None:
    fleet.need("failover")
    third = fleet.add_gpu_host()
    result = fleet.deploy()
    assert result.rc == 0 and result.errors == 0, _ok(result)
    unit = fleet.gw.ssh("cat /etc/systemd/system/gpu-llm-gateway.service", check=True).stdout
    assert f"http://{third.ip}:8000" in unit
    assert "gateway on http://127.0.0.1:8080 answers for coder (3 backend(s))" in result.output
    before = fleet.served(third)
    for _ in range(9):
        assert fleet.chat().status_code == 200
    assert fleet.served(third) > before
    again = fleet.deploy()
    assert again.rc == 0 and again.changed == 0, f"changed {again.changed_ops}\n{_ok(again)}"
    fleet.passed.add("third")


def _bench(fleet: Fleet, out: Path) -> dict[str, Any]:
    res = subprocess.run(
        [str(PROJECT / ".venv" / "bin" / "gpu-llm"), "bench", fleet.url, "--api-key-file", str(fleet.key_file),
         "--concurrency", "8", "--requests-per-level", "24", "--max-tokens", "32", "--prompt-tokens", "64",
         "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(out.read_text())["levels"][0]["summary"]


def test_4_bench_through_the_gateway_two_backends_vs_one(fleet: Fleet, tmp_path: Path) -> None:
    fleet.need("third")
    # 20 ms per token (the stand-in's slow switch): each backend's capacity (2 sequences x 50 tok/s) is what is
    # measured, not the CPU of this machine that the hosts, the router and the client share
    for h in fleet.gpus[:2]:
        h.ssh("docker exec coder python3 -c \"open('/tmp/slow', 'w').write('0.02')\"", check=True)
    fleet.gpus[2].ssh("docker stop -t 1 coder", check=True)
    try:
        time.sleep(HEALTH * 2 + 2)
        two = _bench(fleet, tmp_path / "two.json")
        fleet.gpus[1].ssh("docker stop -t 1 coder", check=True)
        try:
            time.sleep(HEALTH * 2 + 2)
            one = _bench(fleet, tmp_path / "one.json")
        finally:
            fleet.gpus[1].ssh("docker start coder", check=True)
    finally:
        fleet.gpus[2].ssh("docker start coder", check=True)
        for h in fleet.gpus[:2]:
            h.ssh("docker exec coder rm -f /tmp/slow")
    ratio = two["output_tok_s"] / one["output_tok_s"]
    print(f"[gateway] gpu-llm bench through the gateway, concurrency 8, {SEQS} sequences x 20 ms/token per stand-in: "
          f"2 backends {two['output_tok_s']:.1f} tok/s, 1 backend {one['output_tok_s']:.1f} tok/s, ratio {ratio:.2f}")
    assert two["errors"] == 0 and one["errors"] == 0
    assert ratio > 1.5, "two backends should serve about twice what one does"


def _gateway_cert(fleet: Fleet) -> tuple[Path, Path, Path]:
    """A certificate for the gateway's address signed by the testbed CA: (cert, key, CA to verify it with)."""
    keys = fleet.testbed.cfg.cache / "keys"
    d = fleet.tmp
    (d / "san.cnf").write_text(f"subjectAltName=IP:{fleet.gw.ip}\n")
    for cmd in (["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=gpu-llm gateway", "-keyout",
                 str(d / "gw.key"), "-out", str(d / "gw.csr")],
                ["openssl", "x509", "-req", "-in", str(d / "gw.csr"), "-CA", str(keys / "ca.crt"), "-CAkey",
                 str(keys / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(d / "san.cnf"),
                 "-out", str(d / "gw.crt")]):
        subprocess.run(cmd, check=True, capture_output=True)
    return d / "gw.crt", d / "gw.key", keys / "ca.crt"


def test_5_https_with_a_user_certificate_then_back_to_http(fleet: Fleet, tmp_path: Path) -> None:
    fleet.need("third")
    cert, key, ca = _gateway_cert(fleet)
    # gateway_bind too: HAProxy listens on the gateway's address only, and the deploy's check goes there
    fleet.data[fleet.gw.name].update(gateway_tls_cert=str(cert), gateway_tls_key=str(key), gateway_bind=fleet.gw.ip)
    try:
        result = fleet.deploy()
        assert result.rc == 0 and result.errors == 0, _ok(result) + fleet.gw.ssh(
            "journalctl -u gpu-llm-gateway-tls --no-pager | tail -30").stdout
        assert f"gateway on https://{fleet.gw.ip}:8080 answers for coder (3 backend(s))" in result.output
        assert fleet.gw.ssh("curl -sk -o /dev/null https://127.0.0.1:8080/health").returncode == 7  # not bound there
        assert "PRIVATE KEY" not in result.output
        assert fleet.gw.ssh("stat -c '%a %U' /etc/gpu-llm/gateway-tls.pem", check=True).stdout.split() == ["600", "root"]
        https = f"https://{fleet.gw.ip}:8080"
        body = {"model": "coder", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
        ok = requests.post(f"{https}/v1/chat/completions", json=body, headers=AUTH, verify=str(ca), timeout=30)
        assert ok.status_code == 200, ok.text
        assert requests.post(f"{https}/v1/chat/completions", json=body, verify=str(ca), timeout=30).status_code == 401
        with requests.post(f"{https}/v1/chat/completions", json={**body, "stream": True}, headers=AUTH,
                           verify=str(ca), timeout=30, stream=True) as streamed:
            events = [line for line in streamed.iter_lines() if line.startswith(b"data: ")]
        assert len(events) >= 3 and events[-1] == b"data: [DONE]", events
        with pytest.raises(requests.exceptions.ConnectionError):  # no plain HTTP on the gateway's port any more
            requests.get(f"{fleet.url}/v1/models", headers=AUTH, timeout=10)
        verify = subprocess.run([str(PROJECT / ".venv" / "bin" / "gpu-llm"), "verify", https, "--api-key-file",
                                 str(fleet.key_file), "--cacert", str(ca), "--timeout", "30"],
                                capture_output=True, text=True, timeout=120)
        assert verify.returncode == 0 and json.loads(verify.stdout.splitlines()[-1])["ok"], verify.stdout + verify.stderr
        again = fleet.deploy()
        assert again.rc == 0 and again.changed == 0, f"changed {again.changed_ops}\n{_ok(again)}"
    finally:
        for key_ in ("gateway_tls_cert", "gateway_tls_key", "gateway_bind"):
            fleet.data[fleet.gw.name].pop(key_)
    back = fleet.deploy()
    assert back.rc == 0 and back.errors == 0, _ok(back)
    assert "gateway on http://127.0.0.1:8080 answers for coder (3 backend(s))" in back.output
    assert fleet.gw.ssh("ls /etc/gpu-llm/gateway-tls.pem /etc/systemd/system/gpu-llm-gateway-tls.service").returncode != 0
    assert fleet.chat().status_code == 200


def test_6_a_backend_outside_the_inventory_via_gateway_extra_backends(fleet: Fleet) -> None:
    """The third GPU host leaves the inventory (still serving) and is named in gateway_extra_backends instead."""
    fleet.need("third")
    third = fleet.gpus.pop()
    fleet.data[fleet.gw.name]["gateway_extra_backends"] = [f"http://{third.ip}:8000/"]
    try:
        result = fleet.deploy()
        assert result.rc == 0 and result.errors == 0, _ok(result)
        assert "gateway on http://127.0.0.1:8080 answers for coder (3 backend(s))" in result.output
        unit = fleet.gw.ssh("cat /etc/systemd/system/gpu-llm-gateway.service", check=True).stdout
        assert unit.index(fleet.gpus[-1].ip) < unit.index(f"http://{third.ip}:8000")  # the inventory's, then extras
        before = fleet.served(third)
        for _ in range(9):
            assert fleet.chat().status_code == 200
        assert fleet.served(third) > before
    finally:
        fleet.data[fleet.gw.name].pop("gateway_extra_backends")
        fleet.gpus.append(third)
