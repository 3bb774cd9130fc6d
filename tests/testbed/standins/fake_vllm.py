"""Stand-in for vLLM's OpenAI-compatible server (`python3 -m vllm.entrypoints.openai.api_server`) for end-to-end tests.

Own code because the real server needs a GPU and a 19 GiB model; this one needs python3 and jinja2 only. It keeps
what the deploy and its checks can observe:
  - command line: vLLM's argparse behaviour (`--flag value`, `--flag=value`, `--flag_name` == `--flag-name`,
    bare booleans) against the flag list of the pinned vLLM release (JSON list of names such as "--max-model-len",
    "--no-enable-prefix-caching"; file $FAKE_VLLM_FLAGS, default /standin/flags.json). An unknown flag stops it
    with exit status 2 and argparse's "unrecognized arguments: ..." as vLLM does.
  - start-up: --model must be a directory with config.json and the weight shards its index names; --max-model-len
    may not exceed max_position_embeddings; --chat-template is read at start (else tokenizer_config.json's).
    The port opens only after $FAKE_VLLM_START_DELAY seconds (connection refused until then, as while vLLM loads).
  - API: GET /health, /version, /v1/models; POST /v1/chat/completions and /v1/completions, streaming (SSE) or not;
    --api-key / $VLLM_API_KEY enforced on /v1/* only; errors in vLLM's JSON shape.
  - answers: the chat template is rendered (chat_render.render, transformers-compatible) and the reply is fixed
    text. A prompt ending in an open assistant turn ("<|im_start|>assistant\\n" with no empty think block after
    it) gets "<think>\\nLet me think.\\n</think>\\n\\n" first, as a thinking Qwen3 would, so a wrong template shows.
    Tokens are whitespace words: prompt_tokens counts the rendered prompt, max_tokens cuts the reply,
    ignore_eos pads it to max_tokens; each token costs $FAKE_VLLM_TOKEN_DELAY seconds (default 0.002).
    With --reasoning-parser the think block goes to reasoning_content/reasoning instead of content; on releases with
    --default-chat-template-kwargs (0.14+ in the flag list) the parser, like vLLM 0.26's, takes the whole non-stream
    output for reasoning unless enable_thinking is false (server default kwargs merged under the request's).
  - tools (issue 13): a request with `tools` and tool_choice "auto" is refused (400) without
    --enable-auto-tool-choice --tool-call-parser, as vLLM does; with them (or with "required"/a named function) the
    reply is a hermes call of the first (or named) tool: `tool_calls`, content null, finish_reason "tool_calls".
    --enable-auto-tool-choice without --tool-call-parser, or an unknown parser name, stops it at start.
  - GET /metrics (no key, as vLLM's): vLLM's own names and labels (engine="0",model_name=<first served name>) for
    vllm:num_requests_running, vllm:num_requests_waiting, vllm:generation_tokens_total, vllm:prompt_tokens_total,
    vllm:request_success_total, moving as requests run (names as vLLM 0.26.0 exports them:
    tests/fixtures/vllm_hang/metrics_load.txt).
  - hang switch: while the file $FAKE_VLLM_HANG_FILE (default /tmp/hang) exists, /health still answers 200 and
    /metrics answers with frozen values, running requests stay running and produce no token, new requests wait
    before the engine (not counted), as a frozen vLLM engine does (tests/fixtures/vllm_hang/README.md). The file is
    deleted at start, so a restart cures the hang. At most --max-num-seqs requests run at once (the others wait,
    counted in vllm:num_requests_waiting), as vLLM's scheduler does. While $FAKE_VLLM_SLOW_FILE (default /tmp/slow) exists, each
    token costs the seconds written in it instead (a slow but live engine).
Other known flags are accepted and ignored.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

try:  # run as a script next to chat_render.py, or imported as tests.testbed.standins.fake_vllm
    from chat_render import render
except ImportError:
    try:
        from .chat_render import render  # type: ignore[no-redef]
    except ImportError:
        sys.exit("fake_vllm: chat_render.py (render(template, messages, ...)) must sit next to fake_vllm.py")

from jinja2 import TemplateError

FLAGS_FILE = "/standin/flags.json"
THINK_PREFIX = ["<think>", "\nLet", " me", " think.", "\n</think>"]  # 5 tokens, then "\n\n" before the reply
REPLY = "This is a deterministic reply from fake vLLM."
OPEN_TURN = "<|im_start|>assistant\n"
MULTI_VALUE = {"--served-model-name", "--api-key"}  # vLLM takes one or more values for these
TOOL_PARSERS = ("hermes", "llama3_json", "mistral", "pythonic", "qwen3_coder", "qwen3_xml")  # a subset of vLLM's
REASONING_PARSERS = ("deepseek_r1", "qwen3")  # a subset of vLLM's
HANG_FILE = "/tmp/hang"  # the hang switch (issue 11): while it exists, no token is produced
SLOW_FILE = "/tmp/slow"  # seconds per token while it exists


class ApiError(Exception):
    """An error answer in vLLM's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, kind: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


def fail(message: str, status: int = 1) -> None:
    """Stop start-up the way vLLM does: the exception line on stderr, non-zero exit."""
    print(message, file=sys.stderr, flush=True)
    sys.exit(status)


def known_flags() -> list[str]:
    path = os.environ.get("FAKE_VLLM_FLAGS", FLAGS_FILE)
    try:
        flags = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(f"fake_vllm: cannot read the vLLM flag list {path} ({exc}); set FAKE_VLLM_FLAGS", 2)
    if not isinstance(flags, list) or not all(isinstance(f, str) and f.startswith("-") for f in flags):
        fail(f"fake_vllm: {path} must be a JSON list of flag names like \"--max-model-len\"", 2)
    return flags


def normalise(argv: list[str]) -> list[str]:
    """vLLM's FlexibleArgumentParser: --max_model_len[=v] means --max-model-len[=v]."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            name, sep, value = arg.partition("=")
            arg = name.replace("_", "-") + sep + value
        out.append(arg)
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=os.environ.get("FAKE_VLLM_PROG", "api_server.py"), allow_abbrev=False)
    parser.add_argument("model_tag", nargs="?", help="model (the `vllm serve MODEL` form)")
    for flag in known_flags():
        dest = flag.lstrip("-").replace("-", "_")
        nargs = "+" if flag in MULTI_VALUE else "?"
        parser.add_argument(flag, dest=dest, nargs=nargs, const=True if nargs == "?" else None, default=None)
    return parser.parse_args(normalise(argv))


def value(args: argparse.Namespace, name: str) -> Any:
    """A flag's value, refusing a bare flag where vLLM wants a value."""
    got = getattr(args, name, None)
    if got is True:
        fail(f"api_server.py: error: argument --{name.replace('_', '-')}: expected one argument", 2)
    return got


def parse_len(text: str) -> int:
    """vLLM's human-readable lengths: 32768, 32k (x1000), 32K (x1024), 1m, 1M."""
    factors = {"k": 1000, "K": 1024, "m": 1000**2, "M": 1024**2}
    try:
        if text[-1:] in factors:
            return int(float(text[:-1]) * factors[text[-1]])
        return int(text)
    except ValueError:
        fail(f"api_server.py: error: argument --max-model-len: invalid value {text!r}", 2)
        raise


# vLLM 0.26.0's bucket bounds (tests/fixtures/vllm_hang/metrics_load.txt)
_TTFT_BOUNDS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                80.0, 160.0, 640.0, 2560.0)
_TOKEN_BOUNDS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                 80.0)
HISTOGRAMS = {"vllm:time_to_first_token_seconds": _TTFT_BOUNDS, "vllm:inter_token_latency_seconds": _TOKEN_BOUNDS,
              "vllm:request_time_per_output_token_seconds": _TOKEN_BOUNDS}


class Histogram:
    """A Prometheus histogram in text form (the image has no prometheus_client)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.sum += v
        for i, b in enumerate(self.bounds):
            if v <= b:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out = [f"# HELP {name} Histogram of {name.split(':')[1]}.", f"# TYPE {name} histogram"]
        total = 0
        for b, c in zip([*map(str, map(float, self.bounds)), "+Inf"], self.counts):
            total += c
            out.append(f'{name}_bucket{{{labels},le="{b}"}} {float(total)}')
        return out + [f"{name}_count{{{labels}}} {float(total)}", f"{name}_sum{{{labels}}} {self.sum}"]


class Engine:
    """What the server knows after start-up: names, limits, template, keys."""

    def __init__(self, args: argparse.Namespace) -> None:
        model = value(args, "model") or args.model_tag
        if not model:
            fail("ValueError: no model given (--model PATH)")
        model_dir = Path(model)
        if not (model_dir / "config.json").is_file():
            fail(
                f"ValueError: Invalid repository ID or local directory specified: '{model}'.\n"
                "Please verify the following requirements:\n1. Provide a valid Hugging Face repository ID.\n"
                "2. Specify a local directory that contains a recognized configuration file."
            )
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        self._check_weights(model_dir)
        derived = int(config.get("max_position_embeddings", 2048))
        requested = value(args, "max_model_len")
        self.max_model_len = parse_len(str(requested)) if requested is not None else derived
        if self.max_model_len > derived and os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN") != "1":
            fail(
                f"ValueError: User-specified max_model_len ({self.max_model_len}) is greater than the derived "
                f"max_model_len (max_position_embeddings={derived} in model's config.json). To allow overriding "
                "this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1."
            )
        self.model_path = str(model)
        self.names = list(value(args, "served_model_name") or [self.model_path])
        self.api_keys = list(value(args, "api_key") or []) or [k for k in [os.environ.get("VLLM_API_KEY")] if k]
        self.template = self._load_template(value(args, "chat_template"), model_dir)
        self.reasoning = bool(value(args, "reasoning_parser"))
        self._check_parsers(args)
        self.token_delay = float(os.environ.get("FAKE_VLLM_TOKEN_DELAY", "0.002"))
        self.hang_file = os.environ.get("FAKE_VLLM_HANG_FILE", HANG_FILE)
        self.slow_file = os.environ.get("FAKE_VLLM_SLOW_FILE", SLOW_FILE)
        self.lock = threading.Lock()
        self.running = 0
        self.waiting = 0
        # vLLM's scheduler runs at most --max-num-seqs requests at once; the others wait (vllm:num_requests_waiting)
        seqs = value(args, "max_num_seqs")
        self.slots = threading.BoundedSemaphore(int(seqs)) if seqs else None
        self.generated = 0
        self.prompt_total = 0
        self.success: dict[str, int] = {"stop": 0, "length": 0, "abort": 0, "error": 0, "repetition": 0}
        # vLLM's latency histograms, with its bucket bounds (tests/fixtures/vllm_hang/metrics_load.txt, vLLM 0.26.0)
        self.hists = {name: Histogram(bounds) for name, bounds in HISTOGRAMS.items()}
        self.max_seqs = int(seqs) if seqs else 256  # vLLM's default --max-num-seqs: the KV-cache use stand-in
        self.request = threading.local()  # per request (one handler thread each): start and last token times

    def hung(self) -> bool:
        return os.path.exists(self.hang_file)

    def wait_while_hung(self) -> None:
        while self.hung():
            time.sleep(0.2)

    def step(self) -> None:
        """One generated token: its delay (or the slow file's), blocked while the hang switch is on."""
        self.wait_while_hung()
        delay = self.token_delay
        try:
            with open(self.slow_file, encoding="utf-8") as fh:
                delay = float(fh.read().strip() or delay)
        except (OSError, ValueError):
            pass
        time.sleep(delay)
        self.wait_while_hung()
        now = time.monotonic()
        with self.lock:
            self.generated += 1
            last = getattr(self.request, "last", None)
            if last is None:
                self.hists["vllm:time_to_first_token_seconds"].observe(now - getattr(self.request, "start", now))
                self.request.first = now
            else:
                self.hists["vllm:inter_token_latency_seconds"].observe(now - last)
            self.request.last = now
            self.request.tokens = getattr(self.request, "tokens", 0) + 1

    def admit(self, prompt_tokens: int) -> None:
        self.wait_while_hung()  # a frozen engine never takes in new requests
        if self.slots is not None:
            with self.lock:
                self.waiting += 1
            self.slots.acquire()
            with self.lock:
                self.waiting -= 1
        with self.lock:
            self.running += 1
            self.prompt_total += prompt_tokens
        self.request.start, self.request.first, self.request.last = time.monotonic(), None, None
        self.request.tokens = 0

    def finish(self, reason: str) -> None:
        if self.slots is not None:
            self.slots.release()
        with self.lock:
            self.running -= 1
            self.success[reason] = self.success.get(reason, 0) + 1
            tokens, first = getattr(self.request, "tokens", 0), getattr(self.request, "first", None)
            if tokens > 1 and first is not None:
                # vLLM's TPOT: decode time (first token to last) over the tokens after the first
                self.hists["vllm:request_time_per_output_token_seconds"].observe(
                    (self.request.last - first) / (tokens - 1))

    def metrics(self) -> str:
        """Prometheus text in vLLM's names and labels."""
        labels = f'engine="0",model_name="{self.names[0]}"'
        with self.lock:
            lines = [
                "# HELP vllm:num_requests_running Number of requests in model execution batches.",
                "# TYPE vllm:num_requests_running gauge",
                f"vllm:num_requests_running{{{labels}}} {float(self.running)}",
                "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
                "# TYPE vllm:num_requests_waiting gauge",
                f"vllm:num_requests_waiting{{{labels}}} {float(self.waiting)}",
                "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
                "# TYPE vllm:prompt_tokens_total counter",
                f"vllm:prompt_tokens_total{{{labels}}} {float(self.prompt_total)}",
                "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
                "# TYPE vllm:generation_tokens_total counter",
                f"vllm:generation_tokens_total{{{labels}}} {float(self.generated)}",
                "# HELP vllm:request_success_total Count of successfully processed requests.",
                "# TYPE vllm:request_success_total counter",
                *(f'vllm:request_success_total{{engine="0",finished_reason="{r}",model_name="{self.names[0]}"}} '
                  f"{float(n)}" for r, n in self.success.items()),
                "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
                "# TYPE vllm:kv_cache_usage_perc gauge",
                # stand-in: the share of --max-num-seqs sequences running (vLLM: blocks in use / all blocks)
                f"vllm:kv_cache_usage_perc{{{labels}}} {min(1.0, self.running / self.max_seqs)}",
            ]
            for name, hist in self.hists.items():
                lines += hist.lines(name, labels)
        return "\n".join(lines) + "\n"

    @staticmethod
    def _check_weights(model_dir: Path) -> None:
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            missing = sorted(name for name, shard in weight_map.items() if not (model_dir / shard).is_file())
            if missing:
                fail(f"ValueError: Following weights were not initialized from checkpoint: {set(missing)}")
        elif not any(model_dir.glob("*.safetensors")):
            fail(f"RuntimeError: Cannot find any model weights with `{model_dir}`")

    @staticmethod
    def _load_template(given: str | None, model_dir: Path) -> str | None:
        """vLLM's load_chat_template: a readable file, else literal Jinja, else path-like -> error."""
        if given is None:
            tokenizer_config = model_dir / "tokenizer_config.json"
            if tokenizer_config.is_file():
                return json.loads(tokenizer_config.read_text(encoding="utf-8")).get("chat_template")
            return None
        try:
            return Path(given).read_text(encoding="utf-8")
        except OSError as exc:
            if not any(c in given for c in "{}\n"):
                fail(f"ValueError: The supplied chat template ({given}) looks like a file path, but it failed to be "
                     f"opened. Reason: {exc}")
            return given

    def model_for(self, body: dict[str, Any]) -> str:
        model = body.get("model") or self.names[0]
        if model not in self.names:
            raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        return model

    def reply_tokens(
        self, prompt: str, max_tokens: int | None, ignore_eos: bool, prompt_tokens: int
    ) -> tuple[list[str], str]:
        """The completion as tokens (each with its leading whitespace) and its finish_reason."""
        limit = self.max_model_len - prompt_tokens if max_tokens is None else int(max_tokens)
        if limit < 0 or prompt_tokens + limit > self.max_model_len:
            raise ApiError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_tokens + max(limit, 0)} tokens ({prompt_tokens} in the messages, {max(limit, 0)} in the "
                "completion). Please reduce the length of the messages or completion.",
            )
        words = REPLY.split()
        tokens = list(THINK_PREFIX) + ["\n\n" + words[0]] if prompt.endswith(OPEN_TURN) else [words[0]]
        tokens += [" " + w for w in words[1:]]
        if ignore_eos:
            while len(tokens) < limit:
                tokens.append(" " + words[len(tokens) % len(words)])
        if len(tokens) > limit:
            return tokens[:limit], "length"
        return tokens, "stop"

    def _check_parsers(self, args: argparse.Namespace) -> None:
        """Tool-call and reasoning parser flags, refused at start as vLLM refuses them (issue 13)."""
        self.tool_parser = value(args, "tool_call_parser")
        self.auto_tool_choice = getattr(args, "enable_auto_tool_choice", None) not in (None, False)  # a bare flag
        if self.auto_tool_choice and not self.tool_parser:
            fail("TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser")
        if self.tool_parser and self.tool_parser not in TOOL_PARSERS:
            fail(f"KeyError: 'invalid tool call parser: {self.tool_parser} (chose from {{ {', '.join(TOOL_PARSERS)} }})'")
        reasoning = value(args, "reasoning_parser")
        if reasoning and reasoning not in REASONING_PARSERS:
            fail(f"KeyError: 'invalid reasoning parser: {reasoning} (chose from {{ {', '.join(REASONING_PARSERS)} }})'")
        raw = value(args, "default_chat_template_kwargs")
        try:
            self.default_kwargs = json.loads(raw) if raw else {}
        except ValueError:
            fail(f"api_server.py: error: argument --default-chat-template-kwargs: invalid loads value: {raw!r}", 2)
        # Releases with --default-chat-template-kwargs (0.14+) have the rewritten qwen3 parser: it takes every output
        # for reasoning unless chat_template_kwargs.enable_thinking is false (vLLM 0.26.0 measured on an H200);
        # older parsers split only an output that has both <think> and </think>.
        self.thinking_by_kwargs = "--default-chat-template-kwargs" in known_flags()

    def template_kwargs(self, body: dict[str, Any]) -> dict[str, Any]:
        """The server's --default-chat-template-kwargs with the request's chat_template_kwargs over them."""
        return {**self.default_kwargs, **(body.get("chat_template_kwargs") or {})}

    def tool_call(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The call a Qwen3 model makes when the request offers tools (the first tool, arguments from its schema);
        None when no call is made. tool_choice "auto" needs the parser flags, as in vLLM."""
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
        choice = body.get("tool_choice", "auto" if tools else "none")
        if not tools or choice == "none":
            return None
        if choice == "auto" and not (self.auto_tool_choice and self.tool_parser):
            raise ApiError(400, '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set')
        if isinstance(choice, dict):
            wanted = (choice.get("function") or {}).get("name")
            tools = [t for t in tools if t["function"].get("name") == wanted] or tools
        function = tools[0]["function"]
        params = (function.get("parameters") or {}).get("properties") or {}
        sample = {"string": "fake", "integer": 0, "number": 0, "boolean": False, "array": [], "object": {}}
        arguments = {name: (spec.get("enum") or [sample.get(spec.get("type"), "fake")])[0]
                     for name, spec in params.items() if isinstance(spec, dict)}
        return {"name": function.get("name"), "arguments": arguments}

    def split_reasoning(self, text: str, kwargs: dict[str, Any] | None = None) -> tuple[str | None, str]:
        """(reasoning, content) as a reasoning parser would split them; (None, text) without one."""
        if self.reasoning and self.thinking_by_kwargs:
            if not (kwargs or {}).get("enable_thinking", True):
                return None, text
            thought, closed, rest = text.removeprefix("<think>").partition("</think>")
            return (thought.strip("\n"), rest.lstrip("\n")) if closed else (thought, None)  # type: ignore[return-value]
        if not self.reasoning or not text.startswith("<think>"):
            return None, text
        thought, closed, rest = text[len("<think>"):].partition("</think>")
        return thought.strip("\n"), rest.lstrip("\n") if closed else ""


def message_text(content: Any) -> Any:
    """OpenAI content parts -> the plain string vLLM passes to string-format templates."""
    if isinstance(content, list):
        texts = [part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        return "\n".join(texts)
    return content


class Handler(BaseHTTPRequestHandler):
    """OpenAI routes over the Engine bound on the subclass made by make_server()."""

    protocol_version = "HTTP/1.1"
    server_version = "uvicorn"
    engine: Engine

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- BaseHTTPRequestHandler's name
        pass  # uvicorn-style access lines are printed by _access()

    def _access(self, status: int) -> None:
        print(f'INFO:     {self.client_address[0]}:{self.client_address[1]} - "{self.command} {self.path} '
              f'HTTP/1.1" {status}', flush=True)

    def do_GET(self) -> None:
        self._route({"/health": self._health, "/version": self._version, "/v1/models": self._models,
                     "/metrics": self._metrics})

    def do_POST(self) -> None:
        self._route({"/v1/chat/completions": self._chat, "/v1/completions": self._completions})

    def _route(self, routes: dict[str, Any]) -> None:
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            if path not in routes:
                other = {"/health", "/version", "/v1/models", "/metrics", "/v1/chat/completions", "/v1/completions"}
                self._send_json(405 if path in other else 404,
                                {"detail": "Method Not Allowed" if path in other else "Not Found"})
                return
            if path.startswith("/v1") and self.engine.api_keys:
                if self.headers.get("Authorization") not in {f"Bearer {k}" for k in self.engine.api_keys}:
                    self._send_json(401, {"error": "Unauthorized"})
                    return
            routes[path](raw)
        except ApiError as exc:
            self._send_json(exc.status, exc.body())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _body(self, raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            raise ApiError(400, f"JSON decode error: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    def _health(self, _raw: bytes) -> None:
        self._send_bytes(200, b"", "application/json")

    def _metrics(self, _raw: bytes) -> None:
        self._send_bytes(200, self.engine.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")

    def _version(self, _raw: bytes) -> None:
        self._send_json(200, {"version": os.environ.get("FAKE_VLLM_VERSION", "0.0.0+fake")})

    def _models(self, _raw: bytes) -> None:
        engine = self.engine
        data = [
            {"id": name, "object": "model", "created": int(time.time()), "owned_by": "vllm", "root": engine.model_path,
             "parent": None, "max_model_len": engine.max_model_len, "permission": []}
            for name in engine.names
        ]
        self._send_json(200, {"object": "list", "data": data})

    def _chat(self, raw: bytes) -> None:
        body = self._body(raw)
        model = self.engine.model_for(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages: Field required (a non-empty list)", param="messages")
        if self.engine.template is None:
            raise ApiError(400, "As of transformers v4.44, default chat template is no longer allowed, so you must "
                                "provide a chat template if the tokenizer does not define one.")
        messages = [{**m, "content": message_text(m.get("content"))} for m in messages]
        try:
            prompt = render(self.engine.template, messages, tools=body.get("tools"),
                            add_generation_prompt=body.get("add_generation_prompt", True),
                            **self.engine.template_kwargs(body))
        except TemplateError as exc:
            raise ApiError(400, f"chat template error: {exc}") from exc
        call = self.engine.tool_call(body)
        if call is not None:
            self._answer_tool_call(body, model, prompt, call)
            return
        self._answer(body, model, prompt, chat=True)

    def _answer_tool_call(self, body: dict[str, Any], model: str, prompt: str, call: dict[str, Any]) -> None:
        """A hermes tool call (<tool_call>{json}</tool_call>) as the parser returns it: tool_calls, no content."""
        engine = self.engine
        text = f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
        prompt_tokens, completion = len(prompt.split()), len(text.split())
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion,
                 "completion_tokens": completion, "prompt_tokens_details": None}
        tool_call = {"id": "chatcmpl-tool-" + uuid.uuid4().hex, "type": "function",
                     "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}
        ident, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
        engine.admit(prompt_tokens)
        try:
            for _ in range(completion):
                engine.step()
        finally:
            engine.finish("stop")
        if body.get("stream"):
            extra = {"usage": None} if (body.get("stream_options") or {}).get("include_usage") else {}
            base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
            payloads = [
                {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                      "finish_reason": None}], **extra},
                {**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, **tool_call}]},
                                      "logprobs": None, "finish_reason": None}], **extra},
                {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}],
                 **extra},
            ]
            if extra:
                payloads.append({**base, "choices": [], "usage": usage})
            self._stream(iter(payloads))
            return
        message = {"role": "assistant", "content": None, "reasoning_content": None, "reasoning": None,
                   "tool_calls": [tool_call]}
        self._send_json(200, {"id": ident, "object": "chat.completion", "created": created, "model": model,
                              "choices": [{"index": 0, "message": message, "logprobs": None,
                                           "finish_reason": "tool_calls", "stop_reason": None}],
                              "usage": usage, "prompt_logprobs": None})

    def _completions(self, raw: bytes) -> None:
        body = self._body(raw)
        model = self.engine.model_for(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            prompt = " ".join(str(t) for t in prompt)  # token ids: one word each
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt: a string or a list of token ids is required", param="prompt")
        self._answer(body, model, prompt, chat=False)

    def _answer(self, body: dict[str, Any], model: str, prompt: str, chat: bool) -> None:
        engine = self.engine
        prompt_tokens = len(prompt.split())
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        tokens, finish = engine.reply_tokens(prompt, max_tokens, bool(body.get("ignore_eos")), prompt_tokens)
        n = int(body.get("n") or 1)
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + n * len(tokens),
                 "completion_tokens": n * len(tokens), "prompt_tokens_details": None}
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        engine.admit(prompt_tokens)
        try:
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                self._stream(self._chunks(ident, created, model, tokens, finish, n, chat, usage, include_usage))
                return
            for _ in tokens:
                engine.step()
        except BaseException:
            finish = "abort"
            raise
        finally:
            engine.finish(finish)
        text = "".join(tokens)
        if chat:
            reasoning, content = engine.split_reasoning(text, engine.template_kwargs(body))
            message = {"role": "assistant", "content": content, "reasoning_content": reasoning,
                       "reasoning": reasoning, "tool_calls": []}
            choices = [{"index": i, "message": message, "logprobs": None, "finish_reason": finish, "stop_reason": None}
                       for i in range(n)]
        else:
            choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
                       for i in range(n)]
        self._send_json(200, {"id": ident, "object": "chat.completion" if chat else "text_completion",
                              "created": created, "model": model, "choices": choices, "usage": usage,
                              "prompt_logprobs": None})

    def _chunks(self, ident: str, created: int, model: str, tokens: list[str], finish: str, n: int, chat: bool,
                usage: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
        """The SSE payloads of one streamed answer, in vLLM's order."""
        kind = "chat.completion.chunk" if chat else "text_completion"
        extra = {"usage": None} if include_usage else {}

        def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
            return {"id": ident, "object": kind, "created": created, "model": model, "choices": choices, **extra}

        if chat:
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None} for i in range(n)])
        think_end = -1  # index of the last reasoning token, when a reasoning parser splits them off
        if chat and self.engine.reasoning and tokens[:1] == ["<think>"]:
            think_end = next((i for i, t in enumerate(tokens) if "</think>" in t), len(tokens) - 1)
        for pos, token in enumerate(tokens):
            self.engine.step()
            last = pos == len(tokens) - 1
            if chat:
                if pos <= think_end:
                    thought = token.replace("<think>", "").replace("</think>", "")
                    delta = {"reasoning_content": thought, "reasoning": thought}
                else:
                    delta = {"content": token.lstrip("\n") if pos == think_end + 1 and think_end >= 0 else token}
                choices = [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish if last else None}
                           for i in range(n)]
            else:
                choices = [{"index": i, "text": token, "logprobs": None, "finish_reason": finish if last else None}
                           for i in range(n)]
            yield chunk(choices)
        if include_usage:
            yield {"id": ident, "object": kind, "created": created, "model": model, "choices": [], "usage": usage}

    def _stream(self, payloads: Iterator[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._access(200)
        for payload in payloads:
            self._write_chunk(f"data: {json.dumps(payload)}\n\n".encode())
        self._write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _send_json(self, status: int, body: Any) -> None:
        self._send_bytes(status, json.dumps(body).encode(), "application/json")

    def _send_bytes(self, status: int, raw: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
        self._access(status)


def make_server(args: argparse.Namespace, engine: Engine) -> ThreadingHTTPServer:
    host = value(args, "host") or "0.0.0.0"
    port = int(value(args, "port") or 8000)
    handler = type("BoundHandler", (Handler,), {"engine": engine})
    server_class = type("Server", (ThreadingHTTPServer,), {"request_queue_size": 512, "daemon_threads": True})
    return server_class((host, port), handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    version = os.environ.get("FAKE_VLLM_VERSION", "0.0.0+fake")
    print(f"INFO [api_server.py] vLLM API server version {version} (fake_vllm stand-in)", flush=True)
    given = {k: v for k, v in vars(args).items() if v is not None}
    print(f"INFO [utils.py] non-default args: {given}", flush=True)
    print(f"INFO [api_server.py] args: {args}", flush=True)
    fabric = os.environ.get("GPU_LLM_TESTBED_FABRIC")  # the runtime stand-in's word on an NVSwitch host
    if fabric is not None and fabric != "Completed":
        # what vLLM's worker prints when CUDA cannot initialise before the fabric manager configured the NVSwitch
        # fabric (torch's message, quoted in github.com/haotian-liu/LLaVA/issues/683 and pytorch/pytorch#35710)
        print("RuntimeError: Unexpected error from cudaGetDeviceCount(). Did you run some cuda functions before "
              "calling NumCudaDevices() that might have already set an error? Error 802: system not yet initialized",
              file=sys.stderr, flush=True)
        return 1
    engine = Engine(args)
    if engine.hung():  # a restart cures the hang (the switch lives in the container's /tmp)
        os.remove(engine.hang_file)
        print(f"INFO [fake_vllm] hang switch {engine.hang_file} removed at start", flush=True)
    print(f"INFO [model.py] Using max model len {engine.max_model_len}", flush=True)
    time.sleep(float(os.environ.get("FAKE_VLLM_START_DELAY", "0")))
    print("INFO [gpu_model_runner.py] Model loading took 0.00 GiB and 0.0 seconds (fake)", flush=True)
    server = make_server(args, engine)
    host, port = server.server_address[:2]
    print(f"INFO [api_server.py] Starting vLLM API server 0 on http://{host}:{port}", flush=True)
    print(f"INFO:     Started server process [{os.getpid()}]\nINFO:     Waiting for application startup.\n"
          "INFO:     Application startup complete.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
