"""`gpu-llm bench`: a concurrency sweep of streaming chat completions against a vLLM endpoint."""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import requests
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gpu_llm.verify import (VerifyError, add_cacert, list_models, make_session, normalise_url, read_api_key, request,
                            use_cacert)

PERCENTILES = (50, 90, 99)
# matplotlib is an extra (only --plot needs it): gpu-llm[plot].
PLOT_NEEDS_MATPLOTLIB = "gpu-llm bench --plot needs matplotlib: pip install 'gpu-llm[plot]'"
# Common English words: each is about one token for Qwen's BPE, so word count ~ prompt tokens.
FILLER_WORDS = (
    "the system reads each line of the report and writes a short note about what changed since the last "
    "version while the team checks numbers from every server in the cluster before they ship new code to "
    "users who wait for answers about memory speed power cost and time"
).split()


@dataclass
class RequestRecord:
    """What one streamed chat completion did; times are seconds from the start of its level."""

    ok: bool
    start_s: float
    end_s: float
    ttft_s: float | None = None
    output_tokens: int = 0
    prompt_tokens: int | None = None
    error: str | None = None

    @property
    def latency_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (inter-token latency)."""
        if self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def output_tok_s(self) -> float | None:
        """This request's output tokens per second of its end-to-end latency."""
        return self.output_tokens / self.latency_s if self.ok and self.latency_s > 0 else None


def percentile(values: Sequence[float], q: int) -> float | None:
    """q-th percentile (0-100) with linear interpolation between closest ranks (numpy's default); None if empty."""
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    if q == 100:
        return float(max(values))
    if q == 0:
        return float(min(values))
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _stats(values: Iterable[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    result: dict[str, float | None] = {f"p{q}": percentile(present, q) for q in PERCENTILES}
    result["mean"] = statistics.fmean(present) if present else None
    return result


def summarise(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """Aggregate one concurrency level: counts, throughput over its wall time, and latency percentiles."""
    ok = [r for r in records if r.ok]
    wall = max(r.end_s for r in records) - min(r.start_s for r in records) if records else 0.0
    output_tokens = sum(r.output_tokens for r in ok)
    errors: dict[str, int] = {}
    for record in records:
        if not record.ok:
            errors[str(record.error)] = errors.get(str(record.error), 0) + 1
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "error_counts": errors,
        "wall_s": wall,
        "output_tokens": output_tokens,
        "output_tok_s": output_tokens / wall if wall > 0 else None,
        "requests_per_s": len(ok) / wall if wall > 0 else None,
        "prompt_tokens_mean": _stats(r.prompt_tokens for r in ok)["mean"],
        "ttft_s": _stats(r.ttft_s for r in ok),
        "tpot_s": _stats(r.tpot_s for r in ok),
        "latency_s": _stats(r.latency_s for r in ok),
        "request_output_tok_s": _stats(r.output_tok_s for r in ok),
    }


def make_prompt(n_tokens: int, tag: str, rng: random.Random) -> str:
    """About n_tokens of filler text that starts with `tag`, so no two prompts share a cacheable prefix."""
    words = [rng.choice(FILLER_WORDS) for _ in range(max(1, n_tokens - 24))]
    return f"[{tag}] Read this log and summarise it in one paragraph.\n" + " ".join(words)


def stream_one(session: requests.Session, url: str, payload: dict[str, Any], timeout: float, t0: float) -> RequestRecord:
    """POST one streaming chat completion and time it; failures become a record with `error`, never raise."""
    start = time.monotonic() - t0
    ttft = None
    chunks = 0
    usage: dict[str, Any] = {}
    try:
        response = request(session, "POST", url, timeout=timeout, json=payload, stream=True)
        with response:
            for line in response.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise VerifyError(f"stream error: {chunk['error']}")
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"):
                        chunks += 1
                        if ttft is None:
                            ttft = time.monotonic() - t0 - start
    except (VerifyError, requests.exceptions.RequestException, ValueError) as exc:
        return RequestRecord(ok=False, start_s=start, end_s=time.monotonic() - t0, ttft_s=ttft, error=str(exc)[:200])
    end = time.monotonic() - t0
    if ttft is None:
        return RequestRecord(ok=False, start_s=start, end_s=end, error="stream ended without any output token")
    return RequestRecord(
        ok=True,
        start_s=start,
        end_s=end,
        ttft_s=ttft,
        output_tokens=int(usage.get("completion_tokens") or chunks),  # chunk count if the server sent no usage
        prompt_tokens=usage.get("prompt_tokens"),
    )


def chat_payload(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,  # vLLM extension: every request decodes exactly max_tokens
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def run_level(
    url: str, model: str, api_key: str | None, concurrency: int, n_requests: int, *,
    prompt_tokens: int, max_tokens: int, timeout: float, run_id: str, progress: Progress,
) -> list[RequestRecord]:
    """Send n_requests with at most `concurrency` in flight; each gets a distinct prompt."""
    rng = random.Random(f"{run_id}-{concurrency}")
    payloads = [
        chat_payload(model, make_prompt(prompt_tokens, f"{run_id}-c{concurrency}-r{i}", rng), max_tokens)
        for i in range(n_requests)
    ]
    local = threading.local()

    def one(payload: dict[str, Any]) -> RequestRecord:
        if not hasattr(local, "session"):
            local.session = make_session(api_key, retries=0)
        return stream_one(local.session, f"{url}/v1/chat/completions", payload, timeout, t0)

    task = progress.add_task(f"concurrency {concurrency:>3}", total=n_requests, errors=0)
    records: list[RequestRecord] = []
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in as_completed([pool.submit(one, p) for p in payloads]):
            records.append(future.result())
            progress.update(task, advance=1, errors=sum(not r.ok for r in records))
    return sorted(records, key=lambda r: r.start_s)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def results_table(levels: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="gpu-llm bench (TTFT and TPOT in ms, latency in s)")
    for column in ("conc", "ok/req", "prompt tok", "out tok/s", "tok/s/req p50", "TTFT p50", "TTFT p99",
                   "TPOT p50", "TPOT p99", "lat p99"):
        table.add_column(column, justify="right")
    for level in levels:
        s = level["summary"]
        latency_p99 = s["latency_s"]["p99"]
        table.add_row(
            str(level["concurrency"]), f"{s['ok']}/{s['requests']}",
            "-" if s["prompt_tokens_mean"] is None else f"{s['prompt_tokens_mean']:.0f}",
            "-" if s["output_tok_s"] is None else f"{s['output_tok_s']:.1f}",
            "-" if s["request_output_tok_s"]["p50"] is None else f"{s['request_output_tok_s']['p50']:.1f}",
            _ms(s["ttft_s"]["p50"]), _ms(s["ttft_s"]["p99"]), _ms(s["tpot_s"]["p50"]), _ms(s["tpot_s"]["p99"]),
            "-" if latency_p99 is None else f"{latency_p99:.2f}",
        )
    return table


def print_table(table: Table, file: Any = None) -> None:
    """Print `table` on stdout (or `file`): at the terminal's width on a terminal, else at the table's full natural
    width, so a piped or redirected table never truncates a value ("1505…")."""
    console = Console(file=file)
    if not console.is_terminal:
        width = Console(file=file, width=100_000).measure(table).maximum
        console = Console(file=file, width=max(width, 80))
    console.print(table)


def have_matplotlib() -> bool:
    """Whether `--plot` can work: matplotlib is the optional extra gpu-llm[plot]."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot(results: dict[str, Any], path: str) -> None:
    """PNG of aggregate output tok/s and TTFT/TPOT percentiles against concurrency (needs gpu-llm[plot])."""
    try:
        from matplotlib.figure import Figure  # Figure() renders with Agg and never touches pyplot's global state
    except ImportError as exc:
        raise RuntimeError(PLOT_NEEDS_MATPLOTLIB) from exc

    levels = results["levels"]
    conc = [level["concurrency"] for level in levels]
    summaries = [level["summary"] for level in levels]

    def series(key: str, stat: str, scale: float = 1.0) -> list[float]:
        return [float("nan") if s[key][stat] is None else s[key][stat] * scale for s in summaries]

    fig = Figure(figsize=(13, 4.2), layout="constrained")
    ax_tput, ax_ttft, ax_tpot = fig.subplots(1, 3)
    ax_tput.plot(conc, [s["output_tok_s"] or float("nan") for s in summaries], "o-")
    ax_tput.set(title="Aggregate output throughput", ylabel="output tokens/s")
    ax_tput.set_ylim(bottom=0)
    for ax, key, title in ((ax_ttft, "ttft_s", "Time to first token"), (ax_tpot, "tpot_s", "Time per output token")):
        ax.plot(conc, series(key, "p50", 1000), "o-", label="p50")
        ax.plot(conc, series(key, "p99", 1000), "s--", label="p99")
        ax.set(title=title, ylabel="ms")
        ax.set_ylim(bottom=0)
        ax.legend()
    for ax in (ax_tput, ax_ttft, ax_tpot):
        ax.set_xscale("log", base=2)
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.set_xlabel("concurrent requests")
        ax.grid(True, alpha=0.3)
    settings = results["settings"]
    fig.suptitle(
        f"{results['model']} @ {results['url']}: ~{settings['prompt_tokens']} prompt tokens, "
        f"{settings['max_tokens']} output tokens per request" + (f" ({results['label']})" if results.get("label") else "")
    )
    fig.savefig(path, dpi=110)


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    """The bench subcommand: probe, warm up, sweep, then write JSON/PNG; 0 all ok, 1 some failed, 2 setup error."""
    console = console or Console(stderr=True)
    if args.plot and not have_matplotlib():  # before the sweep, not after minutes of it
        console.print(f"[red]error:[/red] {escape(PLOT_NEEDS_MATPLOTLIB)}", highlight=False, soft_wrap=True)
        return 2
    try:
        use_cacert(getattr(args, "cacert", None))
        url = normalise_url(args.url)
        api_key = read_api_key(args.api_key_file)
        served = list_models(url, api_key=api_key, timeout=30)
        model = args.model or (served[0] if served else None)
        if model not in served:
            raise VerifyError(f"model {model!r} is not served at {url}; /v1/models lists: {', '.join(served) or '(nothing)'}")
        warm = stream_one(make_session(api_key, retries=0), f"{url}/v1/chat/completions",
                          chat_payload(model, "Say hello.", 8), args.request_timeout, time.monotonic())
        if not warm.ok:
            raise VerifyError(f"warm-up request failed: {warm.error}")
    except VerifyError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 2
    run_id = uuid.uuid4().hex[:12]
    results: dict[str, Any] = {
        "tool": "gpu-llm bench",
        "url": url,
        "model": model,
        "label": args.label,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "prompt_tokens": args.prompt_tokens,
            "max_tokens": args.max_tokens,
            "concurrency": args.concurrency,
            "requests_per_level": args.requests_per_level,
        },
        "levels": [],
    }
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("errors {task.fields[errors]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for concurrency in args.concurrency:
            n_requests = args.requests_per_level or max(8, 2 * concurrency)
            records = run_level(
                url, model, api_key, concurrency, n_requests, prompt_tokens=args.prompt_tokens,
                max_tokens=args.max_tokens, timeout=args.request_timeout, run_id=run_id, progress=progress,
            )
            results["levels"].append({
                "concurrency": concurrency,
                "summary": summarise(records),
                "records": [asdict(r) for r in records],
            })
    print_table(results_table(results["levels"]))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
        console.print(f"results: {args.out}")
    if args.plot:
        plot(results, args.plot)
        console.print(f"plot: {args.plot}")
    failed = sum(level["summary"]["errors"] for level in results["levels"])
    if failed:
        console.print(f"[yellow]{failed} request(s) failed[/yellow]; see error_counts in the results")
    return 1 if failed else 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _concurrency_list(text: str) -> list[int]:
    try:
        return sorted({_positive_int(part.strip()) for part in text.split(",")})
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"--concurrency {text!r}: {exc}; expected e.g. 1,4,16,64") from exc


def register(subparsers: Any) -> None:
    """Add the `bench URL ...` subcommand to a `gpu-llm` subparsers object."""
    parser = subparsers.add_parser(
        "bench", help="concurrency sweep of streaming chat completions", allow_abbrev=False
    )
    parser.add_argument("url", help="server URL, e.g. http://HOST:8000")
    parser.add_argument("--model", help="served model name (default: the first one /v1/models lists)")
    parser.add_argument("--api-key-file", metavar="PATH", help="file holding the API key (else $VLLM_API_KEY)")
    add_cacert(parser)
    parser.add_argument("--concurrency", type=_concurrency_list, default=[1, 4, 16, 64], metavar="LIST",
                        help="comma-separated concurrency levels (default 1,4,16,64)")
    parser.add_argument("--requests-per-level", type=_positive_int, metavar="N",
                        help="requests per level (default: max(8, 2 x concurrency))")
    parser.add_argument("--prompt-tokens", type=_positive_int, default=2048, metavar="N",
                        help="approximate prompt length in tokens, distinct per request (default 2048)")
    parser.add_argument("--max-tokens", type=_positive_int, default=256, metavar="N",
                        help="output tokens per request (default 256)")
    parser.add_argument("--request-timeout", type=float, default=600, metavar="S",
                        help="seconds one request may take (default 600)")
    parser.add_argument("--out", metavar="PATH", help="write the results as JSON here")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of throughput and latency vs concurrency here "
                        "(needs matplotlib: pip install 'gpu-llm[plot]')")
    parser.add_argument("--label", help="note shown in the plot title and results (e.g. 'H200, tuned flags')")
    parser.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    """Run `bench` without the rest of the gpu-llm CLI (python -m gpu_llm.bench URL ...)."""
    parser = argparse.ArgumentParser(prog="gpu-llm")
    register(parser.add_subparsers(required=True))
    args = parser.parse_args(["bench", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
