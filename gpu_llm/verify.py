"""Check a vLLM OpenAI endpoint: wait for /health, then one smoke-test chat completion.

Standalone on purpose: the deploy copies this file to GPU hosts and runs it with a venv python,
so it imports only the standard library and requests (no gpu_llm, no rich).

    python verify.py --url http://127.0.0.1:8000 --model coder --api-key-file /etc/gpu-llm/api-key
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any, Callable
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

SMOKE_PROMPT = "Reply with the single word: ready"
THINK_TAG = "<think>"
API_KEY_ENV = "VLLM_API_KEY"


class VerifyError(Exception):
    """The endpoint is unreachable, refuses us, or answers wrongly; the message says which."""


def normalise_url(base_url: str) -> str:
    """Return the server root ("http://host:port") of base_url, refusing anything but http(s)."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise VerifyError(
            f"bad URL {base_url!r}: expected http://HOST:PORT or https://HOST:PORT (e.g. http://127.0.0.1:8000)"
        )
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):  # accept the OpenAI base URL users paste from client configs
        path = path[: -len("/v1")]
    return f"{parts.scheme}://{parts.netloc}{path}"


def make_session(api_key: str | None = None, *, retries: int = 3, pool_size: int = 10) -> requests.Session:
    """A session that sends the API key and retries idempotent GETs on connection errors and 502/503/504."""
    session = requests.Session()
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=0.5,
        status_forcelist=(502, 503, 504),
        allowed_methods=frozenset({"GET", "HEAD"}),
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry, pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if api_key:
        session.headers["Authorization"] = f"Bearer {api_key}"
    return session


def error_reason(exc: Exception) -> str:
    """Shortest useful text of a requests exception (its str() nests urllib3's whole retry history)."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip()
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS handshake failed (wrong scheme? try http:// instead of https://)"
    return text


def request(
    session: requests.Session, method: str, url: str, *, timeout: float, **kwargs: Any
) -> requests.Response:
    """Send one request; turn transport failures, 401 and other non-2xx answers into VerifyError."""
    try:
        response = session.request(method, url, timeout=timeout, **kwargs)
    except requests.exceptions.Timeout as exc:
        raise VerifyError(f"{method} {url}: no answer within {timeout:g}s") from exc
    except requests.exceptions.ConnectionError as exc:
        raise VerifyError(
            f"{method} {url}: cannot connect ({error_reason(exc)}); is the server running and the port right?"
        ) from exc
    except requests.exceptions.RequestException as exc:
        raise VerifyError(f"{method} {url}: {error_reason(exc)}") from exc
    if response.status_code == 401:
        sent = "Authorization" in session.headers or "Authorization" in kwargs.get("headers", {})
        what = "the API key was rejected (wrong key)" if sent else "the server requires an API key and none was given"
        raise VerifyError(
            f"{method} {url}: HTTP 401 Unauthorized: {what}; pass --api-key-file PATH or set {API_KEY_ENV}"
        )
    if not response.ok:
        raise VerifyError(f"{method} {url}: HTTP {response.status_code}: {response.text[:300].strip()}")
    return response


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise VerifyError(f"{response.request.method} {response.url}: answer is not JSON: {response.text[:200]!r}") from exc


def list_models(
    base_url: str, *, api_key: str | None = None, timeout: float = 30, session: requests.Session | None = None
) -> list[str]:
    """Names of the models GET /v1/models lists (vLLM lists the --served-model-name values)."""
    root = normalise_url(base_url)
    session = session or make_session(api_key)
    body = _json(request(session, "GET", f"{root}/v1/models", timeout=timeout))
    try:
        return [entry["id"] for entry in body["data"]]
    except (KeyError, TypeError) as exc:
        raise VerifyError(f"GET {root}/v1/models: unexpected answer {str(body)[:200]}") from exc


def wait_healthy(
    base_url: str,
    timeout_s: float,
    *,
    api_key: str | None = None,
    interval: float = 2,
    progress: Callable[[str], Any] = print,
    progress_every: float = 15,
) -> float:
    """Poll GET /health until it answers 200; return the seconds waited. Raise VerifyError on timeout."""
    root = normalise_url(base_url)
    url = f"{root}/health"
    session = make_session(api_key, retries=0)  # the loop itself is the retry
    start = time.monotonic()
    deadline = start + timeout_s
    next_report = start + progress_every
    last = "no answer yet"
    while True:
        now = time.monotonic()
        try:
            status = session.get(url, timeout=max(1.0, min(10.0, deadline - now))).status_code
            if status == 200:
                return time.monotonic() - start
            last = f"HTTP {status}"
        except requests.exceptions.RequestException as exc:
            last = error_reason(exc)
        now = time.monotonic()
        if now >= deadline:
            raise VerifyError(f"{url} not healthy after {timeout_s:g}s (last: {last})")
        if now >= next_report:
            progress(f"waiting for {url}: {now - start:.0f}s of {timeout_s:g}s elapsed (last: {last})")
            next_report = now + progress_every
        time.sleep(min(interval, max(0.0, deadline - now)))


def smoke_test(base_url: str, model: str, *, api_key: str | None = None, timeout: float = 120) -> dict[str, Any]:
    """Check that `model` is served and answers one chat completion without thinking; return what was seen."""
    root = normalise_url(base_url)
    session = make_session(api_key)
    served = list_models(root, timeout=min(timeout, 30), session=session)
    if model not in served:
        raise VerifyError(
            f"model {model!r} is not served at {root}; /v1/models lists: {', '.join(served) or '(nothing)'}"
        )
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": SMOKE_PROMPT}],
        "max_tokens": 32,
        "temperature": 0,
    }
    url = f"{root}/v1/chat/completions"
    start = time.monotonic()
    body = _json(request(session, "POST", url, timeout=timeout, json=payload))
    latency = time.monotonic() - start
    try:
        message = body["choices"][0]["message"]
    except (KeyError, IndexError, TypeError) as exc:
        raise VerifyError(f"POST {url}: unexpected answer {str(body)[:300]}") from exc
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    if THINK_TAG in content or reasoning:
        raise VerifyError(
            f"model {model!r} is thinking (reply {(content or reasoning)[:80]!r}): the chat template leaves "
            "Qwen3's thinking on; serve a template that sets enable_thinking to false"
        )
    if body.get("model") != model:
        raise VerifyError(f"POST {url}: answer names model {body.get('model')!r}, expected {model!r}")
    if not content.strip():
        raise VerifyError(f"POST {url}: empty reply (finish_reason {body['choices'][0].get('finish_reason')!r})")
    return {
        "ok": True,
        "url": root,
        "model": model,
        "served_models": served,
        "reply": content.strip(),
        "latency_s": round(latency, 3),
        "usage": body.get("usage"),
    }


def read_api_key(path: str | None) -> str | None:
    """The API key from `path` (stripped), else from $VLLM_API_KEY, else None."""
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                key = handle.read().strip()
        except OSError as exc:
            raise VerifyError(f"--api-key-file {path!r}: cannot read it ({exc.strerror})") from exc
        if not key:
            raise VerifyError(f"--api-key-file {path!r} is empty; it must hold the API key")
        return key
    return os.environ.get(API_KEY_ENV) or None


def verify(url: str, model: str | None, api_key: str | None, timeout_s: float,
           smoke: bool = True) -> dict[str, Any]:
    """wait_healthy, then smoke_test `model` (or the first model the server lists) unless `smoke` is off."""
    waited = wait_healthy(url, timeout_s, api_key=api_key, progress=lambda line: print(line, file=sys.stderr))
    if not smoke:
        return {"ok": True, "url": normalise_url(url), "healthy_after_s": round(waited, 1), "smoke_test": "skipped"}
    if model is None:
        served = list_models(url, api_key=api_key)
        if not served:
            raise VerifyError(f"{normalise_url(url)}/v1/models lists no model")
        model = served[0]
    result = smoke_test(url, model, api_key=api_key)
    result["healthy_after_s"] = round(waited, 1)
    return result


def _report(url: str, model: str | None, api_key_file: str | None, timeout_s: float, smoke: bool = True,
            cacert: str | None = None) -> int:
    """Run verify() and print its outcome as one JSON line; 0 when it passed, 1 otherwise."""
    try:
        use_cacert(cacert)
        result = verify(url, model, read_api_key(api_key_file), timeout_s, smoke)
    except VerifyError as exc:
        print(json.dumps({"ok": False, "url": url, "model": model, "error": str(exc)}))
        return 1
    print(json.dumps(result))
    return 0


def add_cacert(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cacert", metavar="PATH", help="CA bundle (PEM) to verify an https:// URL with, e.g. a "
                        "gateway's private CA (default: the system's, or $REQUESTS_CA_BUNDLE)")


def use_cacert(path: str | None) -> None:
    """Make every requests session of this process verify HTTPS with `path` (requests reads REQUESTS_CA_BUNDLE per
    request: https://requests.readthedocs.io/en/latest/user/advanced/#ssl-cert-verification)."""
    if path is None:
        return
    if not os.path.isfile(path):
        raise VerifyError(f"--cacert {path}: no such file")
    os.environ["REQUESTS_CA_BUNDLE"] = path


def _add_common(parser: argparse.ArgumentParser, timeout_default: float) -> None:
    parser.add_argument("--api-key-file", metavar="PATH", help=f"file holding the API key (else ${API_KEY_ENV})")
    add_cacert(parser)
    parser.add_argument(
        "--timeout", type=float, default=timeout_default, metavar="S",
        help=f"seconds to wait for /health (default {timeout_default:g})",
    )


def register(subparsers: Any) -> None:
    """Add `verify URL [--model NAME] [--api-key-file F] [--timeout S]` to a `gpu-llm` subparsers object."""
    parser = subparsers.add_parser(
        "verify", help="wait for a vLLM endpoint and smoke-test it", allow_abbrev=False  # --api-key must not mean --api-key-file
    )
    parser.add_argument("url", help="server URL, e.g. http://HOST:8000")
    parser.add_argument("--model", help="served model name (default: the first one /v1/models lists)")
    _add_common(parser, timeout_default=60)
    parser.set_defaults(func=lambda args: _report(args.url, args.model, args.api_key_file, args.timeout,
                                                  cacert=args.cacert))


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point used on GPU hosts by the deploy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--url", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", required=True, help="served model name that must answer")
    parser.add_argument("--no-smoke-test", dest="smoke", action="store_false",
                        help="only wait for /health (deploy setting vllm_smoke_test: false)")
    _add_common(parser, timeout_default=1200)  # as gpu_llm.defaults' vllm_health_timeout
    args = parser.parse_args(argv)
    return _report(args.url, args.model, args.api_key_file, args.timeout, args.smoke, args.cacert)


if __name__ == "__main__":
    sys.exit(main())
