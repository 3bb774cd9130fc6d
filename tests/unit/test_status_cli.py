"""`gpu-llm status` against local HTTP servers: vLLM-like /metrics that move, a Prometheus-like query API, and
unreachable URLs."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from gpu_llm import cli
from gpu_llm import status as st


def _metrics(tokens: float, running: float, ttft_counts: list[float], model: str = "coder") -> str:
    labels = f'engine="0",model_name="{model}"'
    bounds = ["0.1", "0.5", "1.0", "+Inf"]
    lines = ["# TYPE vllm:num_requests_running gauge", f"vllm:num_requests_running{{{labels}}} {running}",
             "# TYPE vllm:num_requests_waiting gauge", f"vllm:num_requests_waiting{{{labels}}} 2.0",
             "# TYPE vllm:kv_cache_usage_perc gauge", f"vllm:kv_cache_usage_perc{{{labels}}} 0.25",
             "# TYPE vllm:generation_tokens_total counter", f"vllm:generation_tokens_total{{{labels}}} {tokens}",
             "# TYPE vllm:time_to_first_token_seconds histogram"]
    lines += [f'vllm:time_to_first_token_seconds_bucket{{{labels},le="{b}"}} {c}' for b, c in zip(bounds, ttft_counts)]
    lines += [f"vllm:time_to_first_token_seconds_count{{{labels}}} {ttft_counts[-1]}",
              f"vllm:time_to_first_token_seconds_sum{{{labels}}} 1.0"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[str, dict], tuple[int, str]]], str]]:
    servers = []

    def start(answer: Callable[[str, dict], tuple[int, str]]) -> str:
        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                code, body = answer(parts.path, parse_qs(parts.query))
                raw = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *a: object) -> None:
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bucket_quantile_interpolates_like_prometheus():
    # 100 observations: 50 <= 0.1, 90 <= 0.5, 100 <= 1.0 -> p50 = 0.1, p90 = 0.5, p99 in (0.5, 1.0]
    b = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert st.bucket_quantile(0.5, b) == pytest.approx(0.1)
    assert st.bucket_quantile(0.99, b) == pytest.approx(0.5 + 0.5 * 9 / 10)
    assert st.bucket_quantile(0.99, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert st.bucket_quantile(0.99, [(0.1, 1.0), (float("inf"), 10.0)]) == 0.1  # in +Inf: the highest bound


def test_endpoints_table_from_two_scrapes(server, capsys):
    calls = {"n": 0}

    def vllm(path: str, _q: dict) -> tuple[int, str]:
        if path != "/metrics":
            return 404, ""
        calls["n"] += 1
        # second read: 30 more tokens, 10 more first tokens all in the 1.0 bucket
        return 200, (_metrics(100, 3, [5, 5, 5, 5]) if calls["n"] == 1 else _metrics(130, 4, [5, 5, 15, 15]))

    up = server(vllm)
    down = f"http://127.0.0.1:{_closed_port()}"
    rc = cli.main(["status", "--endpoints", up, down, "--interval", "0.5", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == st.EXIT_DOWN and doc["ok"] is False
    a, b = doc["instances"]
    assert a["up"] is True and a["model"] == "coder" and a["running"] == 4 and a["waiting"] == 2
    assert a["kv_cache_usage"] == 0.25
    assert 30 / 1.5 < a["tokens_per_s"] < 30 / 0.45  # 30 tokens over about half a second
    assert 0.5 < a["ttft_p99_s"] <= 1.0  # over the interval's requests: all in the (0.5, 1.0] bucket
    assert b["up"] is False and "cannot reach" in b["error"] and b["url"] == down


def test_endpoints_table_text(server, capsys):
    up = server(lambda p, q: (200, _metrics(10, 1, [1, 1, 1, 1], model="qwen")))
    rc = cli.main(["status", "--endpoints", up, "--interval", "0"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "qwen" in out and "25.0%" in out and "up" in out


PROM = {
    "up": [({"host": "gpu1", "instance_name": "coder", "instance": "10.0.0.5:8000"}, "1"),
           ({"host": "gpu2", "instance_name": "coder", "instance": "10.0.0.6:8000"}, "0")],
    "running": [({"host": "gpu1", "instance_name": "coder"}, "3")],
    "waiting": [({"host": "gpu1", "instance_name": "coder"}, "1")],
    "kv": [({"host": "gpu1", "instance_name": "coder"}, "0.5")],
    "rate": [({"host": "gpu1", "instance_name": "coder"}, "123.4")],
    "quantile": [({"host": "gpu1", "instance_name": "coder"}, "NaN")],
    "count": [({"host": "gpu1", "instance_name": "coder", "model_name": "coder"}, "1")],
    "increase": [({"host": "gpu1", "container": "coder"}, "2")],
}


def _prom(path: str, q: dict) -> tuple[int, str]:
    if path != "/api/v1/query":
        return 404, "not found"
    expr = q["query"][0]
    key = next((k for k in ("increase", "quantile", "rate", "kv_cache", "count", "running", "waiting", "up")
                if k in expr), None)
    key = {"kv_cache": "kv"}.get(key, key)
    result = [{"metric": m, "value": [1.0, v]} for m, v in PROM.get(key, [])]
    return 200, json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})


def test_prometheus_rows(server, capsys):
    url = server(_prom)
    rc = cli.main(["status", "--prometheus", url, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == st.EXIT_DOWN
    rows = {r["host"]: r for r in doc["instances"]}
    assert rows["gpu1"]["up"] and rows["gpu1"]["running"] == 3 and rows["gpu1"]["kv_cache_usage"] == 0.5
    assert rows["gpu1"]["tokens_per_s"] == 123.4 and rows["gpu1"]["restarts"] == 2
    assert rows["gpu1"]["ttft_p99_s"] is None  # NaN (no request in the window) is "unknown", not a number
    assert rows["gpu1"]["model"] == "coder" and rows["gpu1"]["url"] == "http://10.0.0.5:8000"
    assert rows["gpu2"]["up"] is False and rows["gpu2"]["running"] is None and "up == 0" in rows["gpu2"]["error"]


@pytest.mark.parametrize("args, says", [
    (["--prometheus", "http://127.0.0.1:{port}"], "cannot reach http://127.0.0.1:{port}/api/v1/query: Connection refused"),
    (["--endpoints", "10.0.0.5:8000"], "not a URL"),
])
def test_unreachable_or_bad_url_is_one_clear_line(args, says, capsys):
    port = _closed_port()
    rc = cli.main(["status", *[a.format(port=port) for a in args]])
    err = capsys.readouterr().err
    assert rc == st.EXIT_BAD_INPUT
    assert err.startswith("gpu-llm status: ") and says.format(port=port) in err
    assert "Traceback" not in err


def test_a_url_that_is_not_prometheus(server, capsys):
    url = server(lambda p, q: (200, "<html>hello</html>"))
    assert cli.main(["status", "--prometheus", url]) == st.EXIT_BAD_INPUT
    assert "the answer is not JSON" in capsys.readouterr().err
    empty = server(lambda p, q: (200, json.dumps({"status": "success", "data": {"result": []}})))
    assert cli.main(["status", "--prometheus", empty]) == st.EXIT_BAD_INPUT
    assert "no vLLM targets" in capsys.readouterr().err
