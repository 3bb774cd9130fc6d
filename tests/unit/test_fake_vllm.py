"""fake_vllm behaves like vLLM's OpenAI server where the deploy and its checks look: flags, start-up, API, thinking."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
STANDINS = ROOT / "tests" / "testbed" / "standins"
SCRIPT = STANDINS / "fake_vllm.py"
OFFICIAL = ROOT / "tests" / "fixtures" / "qwen3_chat_template.official.jinja"
NONTHINKING = ROOT / "templates" / "qwen3_nonthinking.jinja"
# A slice of vLLM's real flag names (both forms of a BooleanOptionalAction flag are listed, as --help shows them).
FLAGS = [
    "--model", "--served-model-name", "--chat-template", "--api-key", "--host", "--port", "--max-model-len",
    "--gpu-memory-utilization", "--enable-prefix-caching", "--no-enable-prefix-caching", "--tensor-parallel-size",
    "--quantization", "--dtype", "--reasoning-parser",
]
THINK = "<think>\nLet me think.\n</think>\n\n"


def load_chat_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chat_render_for_fake_vllm_tests", STANDINS / "chat_render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    flags = tmp_path / "flags.json"
    flags.write_text(json.dumps(FLAGS))
    base = {k: v for k, v in os.environ.items() if k != "VLLM_API_KEY"}
    return {**base, "FAKE_VLLM_FLAGS": str(flags), "FAKE_VLLM_TOKEN_DELAY": "0"}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "Qwen3-32B-AWQ"
    model.mkdir()
    for name in ("config.json", "tokenizer_config.json", "model.safetensors.index.json"):
        shutil.copy(STANDINS / "hf_repo" / name, model / name)
    for shard in set(json.loads((model / "model.safetensors.index.json").read_text())["weight_map"].values()):
        (model / shard).write_bytes(b"\0" * 16)
    return model


class Server:
    def __init__(self, proc: subprocess.Popen, url: str) -> None:
        self.proc, self.url = proc, url

    def post(self, path: str, body: dict, key: str | None = "k3y", **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.post(self.url + path, json=body, headers=headers, timeout=30, **kwargs)


@pytest.fixture
def launch(env: dict[str, str], model_dir: Path) -> Iterator:
    procs: list[subprocess.Popen] = []

    def _launch(*args: str, extra_env: dict[str, str] | None = None, wait: bool = True) -> Server:
        port = free_port()
        cmd = [sys.executable, str(SCRIPT), "--model", str(model_dir), "--port", str(port), "--host", "127.0.0.1"]
        cmd += args
        proc = subprocess.Popen(cmd, env={**env, **(extra_env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        procs.append(proc)
        server = Server(proc, f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 15
        while wait:
            try:
                if requests.get(server.url + "/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "fake_vllm did not become healthy"
            time.sleep(0.05)
        return server

    yield _launch
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30)


def chat(messages_text: str = "Reply with the single word: ready", **extra) -> dict:
    return {"model": "coder", "messages": [{"role": "user", "content": messages_text}], **extra}


def test_an_unknown_flag_stops_it_like_vllm(env: dict[str, str], model_dir: Path) -> None:
    result = run(env, "--model", str(model_dir), "--tokenizer-pool-size", "32")
    assert result.returncode == 2
    assert "error: unrecognized arguments: --tokenizer-pool-size" in result.stderr


def test_flag_spellings_vllm_accepts(launch) -> None:
    server = launch("--served-model-name", "coder", "--max_model_len=4096", "--enable-prefix-caching",
                    "--gpu-memory-utilization", "0.9", "--no-enable-prefix-caching")
    body = requests.get(server.url + "/v1/models", timeout=5).json()
    assert [(m["id"], m["max_model_len"]) for m in body["data"]] == [("coder", 4096)]


def test_the_model_dir_must_hold_a_config(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run(env, "--model", str(tmp_path / "empty"))
    assert result.returncode != 0
    assert str(tmp_path / "empty") in result.stderr


def test_missing_weight_shards_stop_it(env: dict[str, str], model_dir: Path) -> None:
    (model_dir / "model-00003-of-00004.safetensors").unlink()
    result = run(env, "--model", str(model_dir))
    assert result.returncode != 0
    assert "model.layers.42.mlp.down_proj.qweight" in result.stderr


def test_max_model_len_above_the_model_limit_stops_it(env: dict[str, str], model_dir: Path) -> None:
    result = run(env, "--model", str(model_dir), "--max-model-len", "64k")
    assert result.returncode != 0
    assert "max_model_len (64000)" in result.stderr and "40960" in result.stderr


def test_health_waits_for_the_start_delay(launch) -> None:
    started = time.monotonic()
    server = launch(extra_env={"FAKE_VLLM_START_DELAY": "1.5"}, wait=False)
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/health", timeout=1)
    while time.monotonic() - started < 10:
        try:
            if requests.get(server.url + "/health", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.05)
    assert 1.5 <= time.monotonic() - started < 10


@pytest.mark.parametrize("key_from", ["flag", "env"])
def test_api_key_guards_v1_but_not_health(launch, key_from: str) -> None:
    if key_from == "flag":
        server = launch("--served-model-name", "coder", "--api-key", "k3y")
    else:
        server = launch("--served-model-name", "coder", extra_env={"VLLM_API_KEY": "k3y"})
    assert requests.get(server.url + "/health", timeout=5).status_code == 200
    denied = requests.get(server.url + "/v1/models", timeout=5)
    assert denied.status_code == 401 and denied.json() == {"error": "Unauthorized"}
    assert server.post("/v1/chat/completions", chat(), key="wrong").status_code == 401
    ok = requests.get(server.url + "/v1/models", headers={"Authorization": "Bearer k3y"}, timeout=5)
    assert ok.json()["data"][0]["id"] == "coder"


@pytest.mark.parametrize(
    ("template", "kwargs", "thinks"),
    [
        (OFFICIAL, None, True),
        (OFFICIAL, {"enable_thinking": False}, False),
        (NONTHINKING, None, False),
        (NONTHINKING, {"enable_thinking": True}, True),
    ],
    ids=["official", "official-thinking-off", "shipped", "shipped-thinking-on"],
)
def test_chat_thinks_exactly_when_the_template_leaves_thinking_on(launch, template: Path, kwargs, thinks: bool) -> None:
    server = launch("--served-model-name", "coder", "--api-key", "k3y", "--chat-template", str(template))
    extra = {"chat_template_kwargs": kwargs} if kwargs else {}
    body = server.post("/v1/chat/completions", chat(**extra)).json()
    content = body["choices"][0]["message"]["content"]
    assert content.startswith(THINK) is thinks
    assert ("<think>" in content) is thinks
    assert body["model"] == "coder" and body["choices"][0]["finish_reason"] == "stop"
    messages = chat()["messages"]
    prompt = load_chat_render().render(template.read_text(), messages, add_generation_prompt=True, **(kwargs or {}))
    assert body["usage"]["prompt_tokens"] == len(prompt.split())
    assert body["usage"]["completion_tokens"] == len(content.split())


def test_without_chat_template_the_models_own_thinks(launch) -> None:
    server = launch("--served-model-name", "coder", "--api-key", "k3y")
    content = server.post("/v1/chat/completions", chat()).json()["choices"][0]["message"]["content"]
    assert content.startswith(THINK)


def test_reasoning_parser_moves_the_thought_out_of_content(launch) -> None:
    server = launch("--served-model-name", "coder", "--api-key", "k3y", "--reasoning-parser", "qwen3")
    message = server.post("/v1/chat/completions", chat()).json()["choices"][0]["message"]
    assert message["reasoning_content"] == "Let me think." and "<think>" not in message["content"]


def test_max_tokens_cuts_and_ignore_eos_pads(launch) -> None:
    server = launch("--served-model-name", "coder", "--api-key", "k3y", "--chat-template", str(NONTHINKING))
    short = server.post("/v1/chat/completions", chat(max_tokens=3)).json()
    assert len(short["choices"][0]["message"]["content"].split()) == 3
    assert short["choices"][0]["finish_reason"] == "length" and short["usage"]["completion_tokens"] == 3
    padded = server.post("/v1/chat/completions", chat(max_tokens=50, ignore_eos=True)).json()
    assert padded["usage"]["completion_tokens"] == 50 == len(padded["choices"][0]["message"]["content"].split())
    too_long = server.post("/v1/chat/completions", chat(max_tokens=40960))
    assert too_long.status_code == 400 and "maximum context length is 40960" in too_long.json()["error"]["message"]


def test_unknown_model_is_a_404_in_vllms_shape(launch) -> None:
    server = launch("--served-model-name", "coder", "--api-key", "k3y")
    answer = server.post("/v1/chat/completions", {**chat(), "model": "Qwen/Qwen3-32B-AWQ"})
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["type"] == "NotFoundError" and "Qwen/Qwen3-32B-AWQ" in error["message"]


def sse_events(response: requests.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines(decode_unicode=True) if line]


def test_streaming_chunks_parse_and_add_up(launch) -> None:
    server = launch("--served-model-name", "coder", "--api-key", "k3y", "--chat-template", str(OFFICIAL))
    whole = server.post("/v1/chat/completions", chat()).json()
    response = server.post("/v1/chat/completions", chat(stream=True, stream_options={"include_usage": True}),
                           stream=True)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "coder" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1]]
    assert "".join(deltas) == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert chunks[-1]["usage"]["completion_tokens"] == len(deltas)


def test_concurrent_streams_are_served_in_parallel(launch) -> None:
    server = launch("--served-model-name", "coder", "--api-key", "k3y", extra_env={"FAKE_VLLM_TOKEN_DELAY": "0.05"})

    def one(_: int) -> tuple[int, float, float]:
        response = server.post("/v1/chat/completions", chat(stream=True, max_tokens=20, ignore_eos=True), stream=True)
        stamps = [time.monotonic() for line in response.iter_lines() if line]
        return len(stamps), stamps[1], stamps[-1]  # events, first token, [DONE]

    with ThreadPoolExecutor(8) as pool:
        streams = list(pool.map(one, range(8)))
    assert [n for n, _, _ in streams] == [22] * 8  # role chunk + 20 tokens + [DONE]
    # served one after another, a stream's first token would come after the previous stream's [DONE]
    assert max(first for _, first, _ in streams) < min(done for _, _, done in streams)


def test_completions_endpoint(launch) -> None:
    server = launch("--served-model-name", "coder", "--api-key", "k3y")
    body = server.post("/v1/completions", {"model": "coder", "prompt": "one two three", "max_tokens": 4}).json()
    assert body["object"] == "text_completion"
    assert len(body["choices"][0]["text"].split()) == 4 and body["usage"]["prompt_tokens"] == 3


def test_the_deploys_smoke_test_catches_a_thinking_template(launch) -> None:
    from gpu_llm.verify import VerifyError, smoke_test

    good = launch("--served-model-name", "coder", "--api-key", "k3y", "--chat-template", str(NONTHINKING))
    assert smoke_test(good.url, "coder", api_key="k3y")["ok"]
    bad = launch("--served-model-name", "coder", "--api-key", "k3y", "--chat-template", str(OFFICIAL))
    with pytest.raises(VerifyError, match="thinking"):
        smoke_test(bad.url, "coder", api_key="k3y")


def test_cuda_error_802_until_the_fabric_is_completed(env: dict[str, str], model_dir: Path, launch) -> None:
    """On an NVSwitch host the runtime stand-in passes the fabric state; before the fabric manager completed it,
    CUDA cannot initialise (torch's Error 802) and the server never starts."""
    result = run({**env, "GPU_LLM_TESTBED_FABRIC": "Not Started"}, "--model", str(model_dir))
    assert result.returncode == 1
    assert "Error 802: system not yet initialized" in result.stderr
    server = launch(extra_env={"GPU_LLM_TESTBED_FABRIC": "Completed"})
    assert requests.get(server.url + "/health", timeout=5).status_code == 200
