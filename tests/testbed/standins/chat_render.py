"""Render a chat template the way vLLM does, through transformers' apply_chat_template (stdlib + jinja2 only)."""

# Own code because transformers (and its torch-sized dependencies) must not be needed to test a template:
# this standin runs in the dev venv and in a minimal container with only python3-jinja2 (>= 3.1.2).
# Facts from transformers src/transformers/utils/chat_template_utils.py (_compile_jinja_template and
# _render_with_assistant_indices, commit 5e43e2e892453b405ce6d2cb94387b3a3213f30a):
#   ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[..., loopcontrols]);
#   filter tojson = json.dumps with ensure_ascii=False, indent=None, separators=None, sort_keys=False
#   (Jinja's own tojson HTML-escapes, so templates would render differently with it);
#   globals raise_exception(message) -> TemplateError, strftime_now(format) -> datetime.now().strftime(format);
#   rendered with messages, tools, documents, add_generation_prompt and the caller's template kwargs.
# Their {% generation %} tag (AssistantTracker, for training masks) is left out: Qwen3's template has none.

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import Template, TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """transformers' tojson filter: plain json.dumps, non-ASCII kept, no HTML escaping."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    """Let a template refuse a conversation (e.g. roles out of order) with its own message."""
    raise TemplateError(message)


def _strftime_now(format: str) -> str:  # noqa: A002 -- the name templates call it with
    """Today's date/time in a template-chosen format (e.g. Llama 3's 'Today Date')."""
    return datetime.now().strftime(format)


@lru_cache(maxsize=32)
def _compile(template_source: str) -> Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template_source)


def render(
    template_source: str,
    messages: list,
    *,
    tools: list | None = None,
    add_generation_prompt: bool = True,
    **kwargs: Any,
) -> str:
    """The prompt string vLLM builds for `messages`; kwargs are chat_template_kwargs (e.g. enable_thinking)."""
    context = {"documents": None, **kwargs}
    return _compile(template_source).render(
        messages=messages, tools=tools, add_generation_prompt=add_generation_prompt, **context
    )
