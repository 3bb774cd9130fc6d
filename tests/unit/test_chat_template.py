"""templates/qwen3_nonthinking.jinja renders like Qwen3's official template with enable_thinking=False."""

import difflib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from jinja2 import TemplateError

ROOT = Path(__file__).resolve().parents[2]
OURS = (ROOT / "templates" / "qwen3_nonthinking.jinja").read_text(encoding="utf-8")
OFFICIAL = (ROOT / "tests" / "fixtures" / "qwen3_chat_template.official.jinja").read_text(encoding="utf-8")
EMPTY_THINK = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


def _load_chat_render() -> ModuleType:
    # Loaded by path: tests/testbed/standins is a folder of scripts for the testbed, not a package.
    path = ROOT / "tests" / "testbed" / "standins" / "chat_render.py"
    spec = importlib.util.spec_from_file_location("chat_render", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_chat_render().render

# Seed blog's simplified template, verbatim from its "qwen3_nonthinking.jinja" code block.
# Source: seed blog post "Qwen3-32B-AWQ 高效部署：基于 vLLM 的深度实践与优化" (2025-06-10), section
# 准备自定义聊天模板 (project reference copy: /work/shared/seeds/000_89bb0d57a39cb74f.txt).
SEED_BLOG_TEMPLATE = """{% for message in messages %}
    {% if message['role'] == 'system' %}
        {{'<|im_start|>system
' + message['content'] + '<|im_end|>
'}}
    {% elif message['role'] == 'user' %}
        {{'<|im_start|>user
' + message['content'] + '<|im_end|>
'}}
    {% elif message['role'] == 'assistant' %}
        {{'<|im_start|>assistant
' + message['content'] + '<|im_end|>
'}}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
    {{'<|im_start|>assistant
'}}
{% endif %}
"""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city (°C) — <b>&'quotes'</b>",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "城市名"}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "description": "Local time", "parameters": {"type": "object", "properties": {}}},
}


def _call(name: str, arguments: dict | str, wrapped: bool = True) -> dict:
    function = {"name": name, "arguments": arguments}
    return {"id": f"call_{name}", "type": "function", "function": function} if wrapped else function


SHAPES: dict[str, tuple[list[dict], list[dict] | None]] = {
    "user-only": ([{"role": "user", "content": "Hello"}], None),
    "system-and-user": (
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
        None,
    ),
    "multi-turn": (
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "6"},
            {"role": "user", "content": "你好，再见"},
        ],
        None,
    ),
    "history-reasoning-content": (
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "\nadd them\n"},
            {"role": "user", "content": "Thanks"},
        ],
        None,
    ),
    "history-think-in-content": (
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
            {"role": "user", "content": "Thanks"},
        ],
        None,
    ),
    "last-assistant-with-think": (
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        ],
        None,
    ),
    "system-mid-conversation": (
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Bye"},
        ],
        None,
    ),
    "tools-no-system": ([{"role": "user", "content": "Weather in Paris?"}], [WEATHER_TOOL, TIME_TOOL]),
    "tools-with-system": (
        [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Paris?"}],
        [WEATHER_TOOL],
    ),
    "tool-call-dict-args-single-response": (
        [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", {"city": "Paris"})]},
            {"role": "tool", "tool_call_id": "call_get_weather", "content": '{"temp": 21}'},
        ],
        [WEATHER_TOOL],
    ),
    "tool-call-string-args-with-content": (
        [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [_call("get_weather", '{"city": "Paris"}')],
            },
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
            {"role": "user", "content": "Thanks"},
        ],
        [WEATHER_TOOL],
    ),
    "parallel-calls-consecutive-responses": (
        [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather and time in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    _call("get_weather", {"city": "Paris"}),
                    _call("get_time", "{}", wrapped=False),
                ],
            },
            {"role": "tool", "content": "sunny"},
            {"role": "tool", "content": "12:00"},
        ],
        [WEATHER_TOOL, TIME_TOOL],
    ),
    "multi-step-tool-flow": (
        [
            {"role": "user", "content": "Plan my day in Paris"},
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "need weather first",
                "tool_calls": [_call("get_weather", {"city": "Paris"})],
            },
            {"role": "tool", "content": "sunny"},
            {
                "role": "assistant",
                "content": "<think>\nnow the time\n</think>\n\n",
                "tool_calls": [_call("get_time", {})],
            },
            {"role": "tool", "content": "12:00"},
            {"role": "assistant", "content": "Go for a walk at noon."},
        ],
        [WEATHER_TOOL, TIME_TOOL],
    ),
    "tool-response-as-user-text": (
        [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "call it",
                "tool_calls": [_call("get_weather", {"city": "Oslo"})],
            },
            {"role": "user", "content": "<tool_response>\nrain\n</tool_response>"},
        ],
        [WEATHER_TOOL],
    ),
    "list-content-user": (
        [{"role": "user", "content": [{"type": "text", "text": "ignored by the template"}]}],
        None,
    ),
}


def _official_off(messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool) -> str:
    return render(OFFICIAL, messages, tools=tools, add_generation_prompt=add_generation_prompt, enable_thinking=False)


@pytest.mark.parametrize("add_generation_prompt", [True, False], ids=["gen", "nogen"])
@pytest.mark.parametrize("shape", SHAPES)
def test_default_render_equals_official_with_thinking_off(shape: str, add_generation_prompt: bool) -> None:
    messages, tools = SHAPES[shape]
    ours = render(OURS, messages, tools=tools, add_generation_prompt=add_generation_prompt)
    assert ours == _official_off(messages, tools, add_generation_prompt)


@pytest.mark.parametrize("enable_thinking", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_explicit_client_choice_equals_official(shape: str, enable_thinking: bool) -> None:
    messages, tools = SHAPES[shape]
    ours = render(OURS, messages, tools=tools, enable_thinking=enable_thinking)
    assert ours == render(OFFICIAL, messages, tools=tools, enable_thinking=enable_thinking)


def test_default_prompt_ends_in_empty_think_block_and_official_default_thinks() -> None:
    messages, _ = SHAPES["system-and-user"]
    assert render(OURS, messages).endswith(EMPTY_THINK)
    assert render(OURS, messages, enable_thinking=True).endswith("<|im_start|>assistant\n")
    assert render(OFFICIAL, messages).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("value", [None, "true", "false", 0, 1])
def test_non_boolean_enable_thinking_keeps_thinking_off(value: object) -> None:
    messages, _ = SHAPES["user-only"]
    assert render(OURS, messages, enable_thinking=value) == _official_off(messages, None, True)


def _body(source: str) -> str:
    header_end = source.index("-#}\n") + len("-#}\n")
    assert source.startswith("{#-")
    return source[header_end:]


@pytest.mark.parametrize("source", [OURS, OFFICIAL], ids=["ours", "official"])
def test_header_comment_renders_nothing(source: str) -> None:
    for shape in ("multi-step-tool-flow", "tools-with-system"):
        messages, tools = SHAPES[shape]
        assert render(source, messages, tools=tools) == render(_body(source), messages, tools=tools)


def test_ours_differs_from_official_in_one_line_only() -> None:
    diff = [
        line
        for line in difflib.unified_diff(_body(OFFICIAL).splitlines(), _body(OURS).splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert diff == [
        "-    {%- if enable_thinking is defined and enable_thinking is false %}",
        "+    {%- if enable_thinking is not true %}",
    ]


@pytest.mark.parametrize("shape", ["user-only", "tools-with-system", "multi-step-tool-flow"])
def test_seed_blog_template_is_not_equivalent(shape: str) -> None:
    messages, tools = SHAPES[shape]
    seed = render(SEED_BLOG_TEMPLATE, messages, tools=tools)
    official = _official_off(messages, tools, True)
    assert seed != official
    assert "<think>\n\n</think>" not in seed and "<think>\n\n</think>" in official
    if tools:
        assert "<tools>" not in seed and "<tools>" in official


def test_tools_are_rendered_with_transformers_tojson() -> None:
    messages, tools = SHAPES["tools-no-system"]
    rendered = render(OFFICIAL, messages, tools=tools)
    assert "\n" + json.dumps(WEATHER_TOOL, ensure_ascii=False) + "\n" in rendered
    assert "城市名" in rendered and "<b>&'quotes'</b>" in rendered


def test_template_helpers_match_transformers() -> None:
    with pytest.raises(TemplateError, match="roles must alternate"):
        render("{{ raise_exception('roles must alternate') }}", [])
    loop_with_break = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m }}{% endfor %}"
    assert render(loop_with_break, [1, 2]) == "1"
    assert render("{{ strftime_now('%Y') | length }}", []) == "4"
    pretty = render("{{ x | tojson(indent=2, sort_keys=True) }}", [], x={"b": 1, "a": "é"})
    assert pretty == '{\n  "a": "é",\n  "b": 1\n}'
    assert render("{% if true %}\n  a\n{% endif %}\n", []) == "  a\n"
