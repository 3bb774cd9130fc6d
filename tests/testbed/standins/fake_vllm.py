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
    With --reasoning-parser the think block goes to reasoning_content/reasoning instead of content.
Other known flags are accepted and ignored.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
        self.token_delay = float(os.environ.get("FAKE_VLLM_TOKEN_DELAY", "0.002"))

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

    def split_reasoning(self, text: str) -> tuple[str | None, str]:
        """(reasoning, content) as a reasoning parser would split them; (None, text) without one."""
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
        self._route({"/health": self._health, "/version": self._version, "/v1/models": self._models})

    def do_POST(self) -> None:
        self._route({"/v1/chat/completions": self._chat, "/v1/completions": self._completions})

    def _route(self, routes: dict[str, Any]) -> None:
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            if path not in routes:
                other = {"/health", "/version", "/v1/models", "/v1/chat/completions", "/v1/completions"}
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
                            **(body.get("chat_template_kwargs") or {}))
        except TemplateError as exc:
            raise ApiError(400, f"chat template error: {exc}") from exc
        self._answer(body, model, prompt, chat=True)

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
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(self._chunks(ident, created, model, tokens, finish, n, chat, usage, include_usage))
            return
        time.sleep(engine.token_delay * len(tokens))
        text = "".join(tokens)
        if chat:
            reasoning, content = engine.split_reasoning(text)
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
            time.sleep(self.engine.token_delay)
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
    engine = Engine(args)
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
