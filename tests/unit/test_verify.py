"""gpu_llm.verify: URL and key handling, error paths over real sockets, and the stand-in vLLM end to end."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from gpu_llm import verify
from gpu_llm.verify import VerifyError

ROOT = Path(__file__).resolve().parents[2]
VERIFY_PY = ROOT / "gpu_llm" / "verify.py"


def free_port() -> int:
    """A localhost port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Canned:
    """Answers fixed (status, JSON body) replies per path, one per request, repeating the last.

    A test double for HTTP error paths the stand-in vLLM cannot be made to produce (e.g. a wrong
    model name in a reply); end-to-end behaviour is tested against tests/testbed/standins/fake_vllm.py.
    """

    def __init__(self, replies: dict[str, list[tuple[int, Any]]]):
        self.replies = replies
        self.seen: list[tuple[str, str, str | None]] = []  # (method, path, Authorization)
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                if "Content-Length" in self.headers:
                    self.rfile.read(int(self.headers["Content-Length"]))
                canned.seen.append((self.command, self.path, self.headers.get("Authorization")))
                queue = canned.replies.get(self.path, [(404, {"detail": "Not Found"})])
                status, body = queue.pop(0) if len(queue) > 1 else queue[0]
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def canned() -> Iterator[Any]:
    servers: list[Canned] = []

    def start(replies: dict[str, list[tuple[int, Any]]]) -> Canned:
        server = Canned(replies)
        threading.Thread(target=server.server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.server.shutdown()
        server.server.server_close()


def models(*names: str) -> tuple[int, Any]:
    return 200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]}


def chat(content: str, model: str = "coder") -> tuple[int, Any]:
    return 200, {
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 15, "completion_tokens": 2, "total_tokens": 17},
    }


UNAUTHORIZED = (401, {"error": "Unauthorized"})


# ---- URLs and keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "root"),
    [
        ("http://10.0.0.5:8000", "http://10.0.0.5:8000"),
        ("https://llm.example.org/", "https://llm.example.org"),
        ("http://10.0.0.5:8000/v1/", "http://10.0.0.5:8000"),
        ("  http://h:1/prefix/v1 ", "http://h:1/prefix"),
    ],
)
def test_normalise_url_returns_server_root(given: str, root: str) -> None:
    assert verify.normalise_url(given) == root


@pytest.mark.parametrize("bad", ["ftp://h:8000", "localhost:8000", "10.0.0.5:8000", "http://", ""])
def test_normalise_url_refuses_non_http_urls_naming_them(bad: str) -> None:
    with pytest.raises(VerifyError, match="bad URL") as err:
        verify.normalise_url(bad)
    assert repr(bad) in str(err.value)


def test_read_api_key_prefers_file_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    monkeypatch.setenv("VLLM_API_KEY", "sk-from-env")
    assert verify.read_api_key(str(key_file)) == "sk-from-file"
    assert verify.read_api_key(None) == "sk-from-env"
    monkeypatch.delenv("VLLM_API_KEY")
    assert verify.read_api_key(None) is None


def test_read_api_key_refuses_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(VerifyError, match="cannot read"):
        verify.read_api_key(str(tmp_path / "absent"))
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(VerifyError, match="is empty"):
        verify.read_api_key(str(tmp_path / "empty"))


def test_cli_has_no_api_key_option_so_keys_stay_off_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        verify.main(["--url", "http://127.0.0.1:1", "--model", "m", "--api-key", "sk-secret"])
    assert "unrecognized arguments" in capsys.readouterr().err


# ---- transport errors ---------------------------------------------------------------------------------


def test_connection_refused_is_one_clear_sentence() -> None:
    with pytest.raises(VerifyError) as err:
        verify.list_models(f"http://127.0.0.1:{free_port()}")
    message = str(err.value)
    assert "cannot connect (Connection refused)" in message
    assert "HTTPConnectionPool" not in message


def test_wait_healthy_times_out_naming_the_last_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(VerifyError, match=r"/health not healthy after 0.6s \(last: Connection refused\)"):
        verify.wait_healthy(url, 0.6, interval=0.1, progress=lambda _: None)


def test_wait_healthy_reports_progress_until_200(canned: Any) -> None:
    server = canned({"/health": [(503, {}), (503, {}), (503, {}), (200, {})]})
    lines: list[str] = []
    waited = verify.wait_healthy(server.url, 10, interval=0.05, progress=lines.append, progress_every=0)
    assert [path for _, path, _ in server.seen] == ["/health"] * 4
    assert lines and all("elapsed (last: HTTP 503)" in line for line in lines)
    assert 0 < waited < 10


def test_wait_healthy_timeout_names_the_last_status(canned: Any) -> None:
    server = canned({"/health": [(500, {})]})
    with pytest.raises(VerifyError, match=r"last: HTTP 500"):
        verify.wait_healthy(server.url, 0.3, interval=0.05, progress=lambda _: None)


def test_get_retries_a_503_then_succeeds(canned: Any) -> None:
    server = canned({"/v1/models": [(503, {}), models("coder")]})
    assert verify.list_models(server.url) == ["coder"]
    assert len(server.seen) == 2


# ---- smoke test --------------------------------------------------------------------------------------


def test_smoke_test_passes_and_sends_the_key(canned: Any) -> None:
    server = canned({"/v1/models": [models("coder")], "/v1/chat/completions": [chat("ready")]})
    result = verify.smoke_test(server.url + "/v1", "coder", api_key="sk-1")
    assert result["ok"] and result["reply"] == "ready" and result["served_models"] == ["coder"]
    assert result["usage"]["completion_tokens"] == 2
    assert {auth for _, _, auth in server.seen} == {"Bearer sk-1"}
    assert [m for m, _, _ in server.seen] == ["GET", "POST"]


@pytest.mark.parametrize(
    ("api_key", "expected"), [(None, "none was given"), ("sk-wrong", "rejected \\(wrong key\\)")]
)
def test_401_says_whether_the_key_was_missing_or_wrong(canned: Any, api_key: str | None, expected: str) -> None:
    server = canned({"/v1/models": [UNAUTHORIZED]})
    with pytest.raises(VerifyError, match=f"401 Unauthorized: .*{expected}.*--api-key-file"):
        verify.smoke_test(server.url, "coder", api_key=api_key)


def test_smoke_test_lists_what_is_served_when_the_model_is_missing(canned: Any) -> None:
    server = canned({"/v1/models": [models("Qwen/Qwen3-32B-AWQ", "other")]})
    with pytest.raises(VerifyError, match=r"'coder' is not served .* lists: Qwen/Qwen3-32B-AWQ, other"):
        verify.smoke_test(server.url, "coder")


def test_smoke_test_fails_when_the_model_thinks(canned: Any) -> None:
    server = canned({"/v1/models": [models("coder")], "/v1/chat/completions": [chat("<think>\nOkay, the user")]})
    with pytest.raises(VerifyError, match="is thinking.*enable_thinking"):
        verify.smoke_test(server.url, "coder")


def test_smoke_test_fails_when_reasoning_comes_back_separately(canned: Any) -> None:
    status, body = chat("ready")
    body["choices"][0]["message"]["reasoning_content"] = "Okay, the user wants"
    server = canned({"/v1/models": [models("coder")], "/v1/chat/completions": [(status, body)]})
    with pytest.raises(VerifyError, match="is thinking"):
        verify.smoke_test(server.url, "coder")


def test_smoke_test_fails_when_the_reply_names_another_model(canned: Any) -> None:
    server = canned({"/v1/models": [models("coder")], "/v1/chat/completions": [chat("ready", model="other")]})
    with pytest.raises(VerifyError, match="names model 'other', expected 'coder'"):
        verify.smoke_test(server.url, "coder")


def test_chat_post_is_not_retried(canned: Any) -> None:
    server = canned({"/v1/models": [models("coder")], "/v1/chat/completions": [(503, {"error": "busy"})]})
    with pytest.raises(VerifyError, match="HTTP 503"):
        verify.smoke_test(server.url, "coder")
    assert [m for m, _, _ in server.seen].count("POST") == 1


# ---- CLIs --------------------------------------------------------------------------------------------


def test_main_prints_one_json_line_and_exits_1_on_failure(capsys: pytest.CaptureFixture[str]) -> None:
    code = verify.main(["--url", f"http://127.0.0.1:{free_port()}", "--model", "coder", "--timeout", "0.3"])
    out = capsys.readouterr().out.splitlines()
    assert code == 1 and len(out) == 1
    result = json.loads(out[0])
    assert result["ok"] is False and "Connection refused" in result["error"]


def test_register_adds_verify_with_model_defaulting_to_the_first_served(
    canned: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-1")
    server = canned({
        "/health": [(200, {})],
        "/v1/models": [models("first", "second")],
        "/v1/chat/completions": [chat("ready", model="first")],
    })
    parser = argparse.ArgumentParser()
    verify.register(parser.add_subparsers())
    args = parser.parse_args(["verify", server.url, "--api-key-file", str(key_file)])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "first" and result["ok"] is True
    assert "Bearer sk-1" in {auth for _, _, auth in server.seen}


def test_verify_py_runs_standalone_without_the_package(tmp_path: Path) -> None:
    """The deploy copies verify.py alone to the GPU host: it must not import gpu_llm or rich."""
    copy = tmp_path / "verify.py"
    copy.write_text(VERIFY_PY.read_text())
    probe = (
        "import sys, runpy; sys.argv = ['verify.py', '--url', 'ftp://x', '--model', 'm'];"
        "code = None\n"
        "try:\n runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n code = e.code\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('gpu_llm', 'rich', 'matplotlib'))\n"
        "print(code, bad)"
    )
    proc = subprocess.run([sys.executable, "-I", "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    lines = proc.stdout.splitlines()
    assert lines[-1] == "1 []", proc.stderr
    assert "bad URL 'ftp://x'" in json.loads(lines[0])["error"]


# ---- against the stand-in vLLM server (tests/testbed/standins/fake_vllm.py) -----------------------------

FAKE_VLLM = ROOT / "tests" / "testbed" / "standins" / "fake_vllm.py"
OFFICIAL_TEMPLATE = ROOT / "tests" / "fixtures" / "qwen3_chat_template.official.jinja"  # lets Qwen3 think
NONTHINKING_TEMPLATE = ROOT / "templates" / "qwen3_nonthinking.jinja"  # what the deploy serves
FAKE_VLLM_FLAGS = ["--model", "--served-model-name", "--chat-template", "--port", "--host", "--api-key",
                   "--max-model-len", "--reasoning-parser"]  # real vLLM flag names this suite passes


@pytest.fixture
def fake_vllm(tmp_path: Path) -> Iterator[Any]:
    """start(template, *flags, env=..., wait=True) -> base URL of a running fake_vllm serving `coder`."""
    model = tmp_path / "Qwen3-32B-AWQ"
    model.mkdir()
    (model / "config.json").write_text((FAKE_VLLM.parent / "hf_repo" / "config.json").read_text())
    (model / "model.safetensors").write_bytes(b"\0" * 16)
    (tmp_path / "flags.json").write_text(json.dumps(FAKE_VLLM_FLAGS))
    procs: list[subprocess.Popen[bytes]] = []

    def start(template: Path, *flags: str, env: dict[str, str] | None = None, wait: bool = True) -> str:
        port = free_port()
        cmd = [sys.executable, str(FAKE_VLLM), "--model", str(model), "--served-model-name", "coder",
               "--chat-template", str(template), "--host", "127.0.0.1", "--port", str(port), *flags]
        full_env = {**{k: v for k, v in os.environ.items() if k != "VLLM_API_KEY"},
                    "FAKE_VLLM_FLAGS": str(tmp_path / "flags.json"), **(env or {})}
        proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        if wait:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, f"fake_vllm exited: {proc.stderr.read().decode() if proc.stderr else ''}"
                try:
                    if requests.get(f"{url}/health", timeout=5).status_code == 200:
                        break
                except requests.RequestException:
                    assert time.monotonic() < deadline, "fake_vllm did not open its port within 30s"
                time.sleep(0.05)
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_verify_passes_against_the_nonthinking_template(
    fake_vllm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = fake_vllm(NONTHINKING_TEMPLATE, "--api-key", "sk-test")
    (tmp_path / "key").write_text("sk-test\n")
    assert verify.main(["--url", url, "--model", "coder", "--api-key-file", str(tmp_path / "key")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["model"] == "coder" and result["served_models"] == ["coder"]
    assert "<think>" not in result["reply"] and result["reply"]


@pytest.mark.parametrize("flags", [(), ("--reasoning-parser", "qwen3")], ids=["in-content", "reasoning-parser"])
def test_verify_catches_a_template_that_lets_the_model_think(
    fake_vllm: Any, flags: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    url = fake_vllm(OFFICIAL_TEMPLATE, *flags)
    assert verify.main(["--url", url, "--model", "coder"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False and "is thinking" in result["error"]


@pytest.mark.parametrize(("key", "expected"), [(None, "none was given"), ("sk-wrong", "API key was rejected")])
def test_verify_explains_a_401(fake_vllm: Any, key: str | None, expected: str) -> None:
    url = fake_vllm(NONTHINKING_TEMPLATE, "--api-key", "sk-test")
    with pytest.raises(VerifyError, match=expected):
        verify.smoke_test(url, "coder", api_key=key)


def test_verify_names_what_is_served_when_the_model_is_wrong(fake_vllm: Any) -> None:
    url = fake_vllm(NONTHINKING_TEMPLATE)
    with pytest.raises(VerifyError, match="'Qwen3-32B' is not served .* lists: coder"):
        verify.smoke_test(url, "Qwen3-32B")


def test_standalone_verify_py_waits_for_a_slow_start_and_reads_the_key_from_env(
    fake_vllm: Any, tmp_path: Path
) -> None:
    url = fake_vllm(NONTHINKING_TEMPLATE, "--api-key", "sk-env", env={"FAKE_VLLM_START_DELAY": "2"}, wait=False)
    copy = tmp_path / "verify.py"
    copy.write_text(VERIFY_PY.read_text())
    proc = subprocess.run(
        [sys.executable, "-I", str(copy), "--url", url, "--model", "coder", "--timeout", "30"],
        env={**os.environ, "VLLM_API_KEY": "sk-env"}, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is True and result["healthy_after_s"] >= 1
