"""Fact: one end-to-end check through the gateway (GET /v1/models, then a 1-token chat completion), run on the
gateway host by python3 with the key read from a 0600 header file (never on a command line)."""

from __future__ import annotations

import json
from typing import Any

from pyinfra.api import FactBase, QuoteString, StringCommand

# Runs on the gateway host (python3's standard library); argv: address, port, header file, model, timeout seconds, and with
# HTTPS the PEM file whose first certificate the gateway must serve (checked byte for byte: the name in a user's
# certificate need not be 127.0.0.1, so the chain is not verified here; clients verify it).
CHECK = r"""
import json, socket, ssl, sys, time, urllib.request, urllib.error
address, port, header_file, model = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
timeout, pem = float(sys.argv[5]), (sys.argv[6] if len(sys.argv) > 6 else "")
name, _, value = open(header_file).read().strip().partition(": ")
ctx = None
if pem:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    text = open(pem).read()
    want = ssl.PEM_cert_to_DER_cert(text[text.index("-----BEGIN CERTIFICATE"):text.index("-----END CERTIFICATE") + 25])
base = "%s://%s:%s" % ("https" if pem else "http", "[%s]" % address if ":" in address else address, port)
deadline, last = time.monotonic() + timeout, ""
while True:
    try:
        if pem:
            with socket.create_connection((address, int(port)), timeout=10) as raw, \
                    ctx.wrap_socket(raw) as tls:
                if tls.getpeercert(binary_form=True) != want:
                    raise ValueError("the gateway serves another certificate than the one in %s" % pem)
        req = urllib.request.Request(base + "/v1/models", headers={name: value})
        models = [m["id"] for m in json.load(urllib.request.urlopen(req, timeout=10, context=ctx))["data"]]
        if model not in models:
            raise ValueError("/v1/models lists %s, not %s" % (models, model))
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1})
        req = urllib.request.Request(base + "/v1/chat/completions", data=body.encode(),
                                     headers={name: value, "Content-Type": "application/json"})
        answer = json.load(urllib.request.urlopen(req, timeout=30, context=ctx))
        print(json.dumps({"ok": True, "models": models, "completion_tokens": answer["usage"]["completion_tokens"]}))
        break
    except urllib.error.HTTPError as exc:
        last = "HTTP %s: %s" % (exc.code, exc.read()[:200].decode("utf-8", "replace"))
    except Exception as exc:
        last = "%s: %s" % (type(exc).__name__, exc)
    if time.monotonic() > deadline:
        print(json.dumps({"ok": False, "error": last}))
        break
    time.sleep(2)
"""


class GatewayCheck(FactBase[dict]):
    """{"ok": True, "models": [...], "completion_tokens": 1} or {"ok": False, "error": "..."}."""

    @staticmethod
    def default() -> dict:
        return {"ok": False, "error": "the check printed nothing"}

    def command(self, port: int, header_file: str, model: str, timeout_s: int,
                tls_pem: str | None = None, address: str = "127.0.0.1") -> StringCommand:
        return StringCommand("python3", "-c", QuoteString(CHECK), QuoteString(address), str(port), QuoteString(header_file),
                             QuoteString(model), str(timeout_s), *([QuoteString(tls_pem)] if tls_pem else []),
                             "2>&1", "||", "true")

    def process(self, output: list[str]) -> dict[str, Any]:
        for line in reversed(output):
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                return parsed
        return {"ok": False, "error": " ".join(output)[-300:]}
