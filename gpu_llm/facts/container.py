"""Facts about running vLLM instances: the verify script's verdict on one endpoint."""

from __future__ import annotations

from gpu_llm.facts import JsonFact

import json
from dataclasses import dataclass, field
from typing import Any

from pyinfra.api import FactBase, QuoteString, StringCommand

_RC = "gpu-llm-verify-rc="


@dataclass(frozen=True)
class Verdict(JsonFact):
    """What verify.py printed: ok plus its result (model, reply, latency), or the error it gave."""

    ok: bool
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> str:
        return str(self.result.get("error") or "verify.py gave no verdict")


# Where a passing full verification records the container it verified and where ("<id> <StartedAt> <url>"; the
# host snapshot reads these: gpu_llm.facts.snapshot.verified_command). /run is emptied at boot, so the first run
# after a reboot verifies in full again.
VERIFIED_DIR = "/run/gpu-llm"


def verify_command(python: str, script: str, url: str, model: str, timeout_s: int, smoke_test: bool,
                   env_file: str | None, container: str | None = None,
                   verified_dir: str = VERIFIED_DIR) -> StringCommand:
    """Run verify.py; the API key goes from the 0600 env file into its environment (never onto a command line).

    With `container`: when that container (same ID, not restarted since) already passed a full verification
    and /health answers now, only that is checked (a curl instead of starting Python: a no-op re-run's cost);
    a passing full verification records the container for the next run.
    """
    bits: list[Any] = []
    if env_file:
        bits += [StringCommand("VLLM_API_KEY=\"$(sed -n 's/^VLLM_API_KEY=//p' ", QuoteString(env_file), ')"',
                               _separator="")]
    bits += [QuoteString(python), QuoteString(script), "--url", QuoteString(url), "--model", QuoteString(model),
             "--timeout", str(timeout_s)]
    if not smoke_test:
        bits.append("--no-smoke-test")
    full = StringCommand(*bits, "2>/dev/null;", "echo", f"{_RC}$?")
    if container is None:
        return full
    marker = QuoteString(f"{verified_dir}/verified-{container}")
    return StringCommand(
        "c=$(docker inspect -f '{{.Id}} {{.State.StartedAt}}'", QuoteString(container), "2>/dev/null);",
        StringCommand("u=", QuoteString(url), ";", _separator=""),
        'if [ -n "$c" ] && [ "$(cat', marker, '2>/dev/null)" = "$c $u" ] &&',
        "curl -fsS -m 10 -o /dev/null", QuoteString(f"{url}/health"), "2>/dev/null; then",
        "echo", QuoteString(json.dumps({"ok": True, "health": "ok", "verified_before": True})), ";",
        "echo", f"{_RC}0;",
        "else", "r=$(", full, ");", 'echo "$r";',
        'case "$r" in', f"*{_RC}0*)", '[ -n "$c" ] && mkdir -p', QuoteString(verified_dir), '&& echo "$c $u" >', marker,
        ";;",
        "esac;", "fi",
    )


def parse_verdict(lines: list[str]) -> Verdict:
    """verify.py prints one JSON line; the command appends its exit status."""
    rc = next((line[len(_RC):] for line in reversed(lines) if line.startswith(_RC)), "")
    result: dict[str, Any] = {}
    for line in reversed(lines):
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            result = parsed
            break
    if rc != "0" and "error" not in result:
        result = {**result, "error": f"verify.py exited {rc or 'without a status'}: {' '.join(lines)[-300:]}"}
    return Verdict(ok=rc == "0" and result.get("ok", True) is not False, result=result)


class VllmVerdict(FactBase[Verdict]):
    """Wait for one vLLM endpoint's /health and smoke-test it, by running verify.py on the host."""

    def command(self, python: str, script: str, url: str, model: str, timeout_s: int, smoke_test: bool,
                env_file: str | None, container: str | None = None) -> StringCommand:
        return verify_command(python, script, url, model, timeout_s, smoke_test, env_file, container)

    def process(self, output: list[str]) -> Verdict:
        return parse_verdict(output)
