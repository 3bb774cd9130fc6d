"""gpu_llm.facts.gateway: the gateway host's end-to-end check script, run against a local stand-in endpoint."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gpu_llm.facts.gateway import CHECK, GatewayCheck
from gpu_llm.gateway import check_address
from gpu_llm.settings import from_data

KEY = "sk-check-key-12345"


class Endpoint(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._json(401, {"error": "Unauthorized"})
        self._json(200, {"data": [{"id": "coder"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._json(200, {"usage": {"completion_tokens": 1}})


def _pair(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=gw.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def serve():  # noqa: ANN201
    servers = []

    def start(cert: Path | None = None, key: Path | None = None) -> int:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
        if cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv.server_address[1]

    yield start
    for srv in servers:
        srv.shutdown()


def check(tmp_path: Path, port: int, model: str = "coder", pem: Path | None = None, timeout: float = 0) -> dict:
    header = tmp_path / "auth.header"
    header.write_text(f"Authorization: Bearer {KEY}\n")
    argv = ["127.0.0.1", str(port), str(header), model, str(timeout), *([str(pem)] if pem else [])]
    out = subprocess.run([sys.executable, "-c", CHECK, *argv], capture_output=True, text=True, timeout=60).stdout
    return GatewayCheck().process(out.splitlines())


def test_plain_http_check_passes_and_names_a_missing_model(tmp_path: Path, serve) -> None:  # noqa: ANN001
    port = serve()
    assert check(tmp_path, port) == {"ok": True, "models": ["coder"], "completion_tokens": 1}
    bad = check(tmp_path, port, model="other")
    assert bad["ok"] is False and "lists ['coder'], not other" in bad["error"]


def test_https_check_compares_the_served_certificate_with_the_pem(tmp_path: Path, serve) -> None:  # noqa: ANN001
    cert, key = _pair(tmp_path, "served")
    other, other_key = _pair(tmp_path, "other")
    port = serve(cert, key)
    pem = tmp_path / "gateway-tls.pem"
    pem.write_text(cert.read_text() + key.read_text())
    assert check(tmp_path, port, pem=pem)["ok"] is True
    wrong = tmp_path / "other.pem"
    wrong.write_text(other.read_text() + other_key.read_text())
    result = check(tmp_path, port, pem=wrong)
    assert result["ok"] is False and "another certificate" in result["error"]
    assert check(tmp_path, port)["ok"] is False  # plain HTTP to a TLS port fails


def test_the_check_goes_where_the_gateway_listens() -> None:
    assert check_address(from_data({})) == "127.0.0.1"
    assert check_address(from_data({"gateway_bind": "10.0.0.9"})) == "10.0.0.9"
    assert check_address(from_data({"gateway_bind": "::"})) == "::1"
