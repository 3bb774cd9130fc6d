"""fake_vllm's tool-call and reasoning parsers (issue 13): flags refused and honoured as vLLM does."""

import json
from pathlib import Path

import pytest

from tests.unit.test_fake_vllm import FLAGS, NONTHINKING, chat, launch, model_dir, run  # noqa: F401 (fixtures)

API_FLAGS = FLAGS + ["--enable-auto-tool-choice", "--no-enable-auto-tool-choice", "--tool-call-parser",
                     "--default-chat-template-kwargs"]
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "London"]},
                                                    "days": {"type": "integer"}}, "required": ["city"]}}}]
PARSERS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    import os

    flags = tmp_path / "flags.json"
    flags.write_text(json.dumps(API_FLAGS))  # a release with --default-chat-template-kwargs (0.14+)
    base = {k: v for k, v in os.environ.items() if k != "VLLM_API_KEY"}
    return {**base, "FAKE_VLLM_FLAGS": str(flags), "FAKE_VLLM_TOKEN_DELAY": "0"}


def test_auto_tool_choice_needs_the_parser_flags(launch) -> None:
    server = launch("--served-model-name", "coder", "--chat-template", str(NONTHINKING))
    r = server.post("/v1/chat/completions", chat("Weather in Paris?", tools=WEATHER), key=None)
    assert r.status_code == 400 and "--enable-auto-tool-choice" in r.json()["error"]["message"]
    plain = server.post("/v1/chat/completions", chat(), key=None).json()["choices"][0]["message"]
    assert plain["content"] and not plain["tool_calls"]


def test_hermes_parser_returns_tool_calls(launch) -> None:
    server = launch("--served-model-name", "coder", "--chat-template", str(NONTHINKING), *PARSERS)
    body = server.post("/v1/chat/completions", chat("Weather in Paris?", tools=WEATHER), key=None).json()
    choice = body["choices"][0]
    [call] = choice["message"]["tool_calls"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 0}
    stream = server.post("/v1/chat/completions", chat("Weather?", tools=WEATHER, stream=True), key=None, stream=True)
    events = [json.loads(line[6:]) for line in stream.iter_lines(decode_unicode=True)
              if line.startswith("data: {")]
    deltas = [c["delta"] for e in events for c in e["choices"]]
    assert any(d.get("tool_calls", [{}])[0].get("function", {}).get("name") == "get_weather" for d in deltas)
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    none = server.post("/v1/chat/completions", chat("Hi", tools=WEATHER, tool_choice="none"), key=None).json()
    assert none["choices"][0]["message"]["content"] and not none["choices"][0]["message"]["tool_calls"]


def test_parser_flags_are_checked_at_start(env: dict[str, str], model_dir: Path) -> None:  # noqa: F811
    result = run(env, "--model", str(model_dir), "--enable-auto-tool-choice")
    assert result.returncode != 0 and "--enable-auto-tool-choice requires --tool-call-parser" in result.stderr
    result = run(env, "--model", str(model_dir), "--enable-auto-tool-choice", "--tool-call-parser", "nope")
    assert result.returncode != 0 and "invalid tool call parser: nope" in result.stderr


def test_qwen3_parser_needs_the_non_thinking_default_to_keep_the_answer_in_content(launch) -> None:
    # vLLM 0.26 measured on an H200: without enable_thinking=false the non-stream answer lands in reasoning
    bare = launch("--served-model-name", "coder", "--chat-template", str(NONTHINKING), "--reasoning-parser", "qwen3")
    message = bare.post("/v1/chat/completions", chat(), key=None).json()["choices"][0]["message"]
    assert message["content"] is None and message["reasoning_content"]
    server = launch("--served-model-name", "coder", "--chat-template", str(NONTHINKING), "--reasoning-parser", "qwen3",
                    "--default-chat-template-kwargs", '{"enable_thinking": false}')
    message = server.post("/v1/chat/completions", chat(), key=None).json()["choices"][0]["message"]
    assert message["content"].startswith("This is") and message["reasoning_content"] is None
    thinking = server.post("/v1/chat/completions", chat(chat_template_kwargs={"enable_thinking": True}),
                           key=None).json()["choices"][0]["message"]
    assert thinking["reasoning_content"] == "Let me think." and thinking["content"].startswith("This is")
