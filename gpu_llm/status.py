"""`gpu-llm status`: one table of the fleet, per vLLM instance: up, model, running/waiting requests, KV-cache use,
output tokens/s, TTFT p99 and the watchdog's restarts.

Two sources:
  - `--prometheus URL`: instant queries to Prometheus's HTTP API (`/api/v1/query`,
    https://prometheus.io/docs/prometheus/latest/querying/api/) over the series the monitoring host scrapes
    (gpu_llm/monitoring.py: job "vllm" with labels host and instance_name; the watchdog's restart counter);
  - `--endpoints URL ...`: each endpoint's own `/metrics` (no API key needed: vLLM's --api-key guards only /v1/*),
    read twice `--interval` seconds apart for tokens/s, parsed with prometheus_client's text parser; TTFT p99 is
    then over the requests of that interval (since the server started when none finished in it); restarts are
    not known there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import requests

from gpu_llm import monitoring as mon
from gpu_llm.verify import error_reason

EXIT_DOWN = 1
EXIT_BAD_INPUT = 2


class StatusError(Exception):
    """A source cannot be read at all (bad URL, unreachable Prometheus): one line for the user."""


@dataclass
class Row:
    host: str
    instance: str
    url: str
    up: bool
    model: str | None = None
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None  # 0..1
    tokens_per_s: float | None = None
    ttft_p99_s: float | None = None
    restarts: float | None = None  # by the watchdog in the last hour (Prometheus only)
    error: str | None = None


# ---- quantiles from histogram buckets (prometheus_client parses; it has no quantile function) ---------------------


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus's histogram_quantile over cumulative (upper bound, count) buckets: linear interpolation inside
    the bucket holding the rank; the +Inf bucket answers with the highest finite bound. None without samples."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


# ---- from /metrics ------------------------------------------------------------------------------------------------


@dataclass
class Scrape:
    model: str | None
    gauges: dict[str, float]  # metric -> sum over label sets
    counters: dict[str, float]
    ttft_buckets: dict[float, float]  # le -> cumulative count, summed over label sets


def parse_metrics(text: str) -> Scrape:
    from prometheus_client.parser import text_string_to_metric_families

    model = None
    gauges: dict[str, float] = {}
    counters: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            model = model or labels.get("model_name")
            if name == f"{mon.TTFT}_bucket":
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + value
            elif family.type == "gauge":
                gauges[name] = gauges.get(name, 0.0) + value
            elif family.type == "counter" and name.endswith("_total"):
                counters[name] = counters.get(name, 0.0) + value
    return Scrape(model, gauges, counters, buckets)


def _get(url: str, timeout: float, **kw: Any) -> requests.Response:
    try:
        resp = requests.get(url, timeout=timeout, **kw)
    except requests.exceptions.InvalidURL as exc:
        raise StatusError(f"{url}: not a valid URL ({exc})") from None
    except requests.exceptions.MissingSchema:
        raise StatusError(f"{url}: not a URL (expected http://HOST:PORT)") from None
    except requests.Timeout:
        raise StatusError(f"cannot reach {url}: no answer within {timeout:g} s") from None
    except requests.ConnectionError as exc:
        raise StatusError(f"cannot reach {url}: {_short_text(error_reason(exc))}") from None
    except requests.RequestException as exc:
        raise StatusError(f"cannot reach {url}: {type(exc).__name__}: {_short(exc)}") from None
    if resp.status_code != 200:
        raise StatusError(f"GET {url}: HTTP {resp.status_code} {resp.reason}")
    return resp


def _short(exc: Exception) -> str:
    return _short_text(str(exc))


def _short_text(text: str) -> str:
    return text if len(text) < 200 else text[:200] + "..."


def endpoint_rows(urls: list[str], interval: float, timeout: float) -> list[Row]:
    """One row per endpoint from two scrapes of its /metrics `interval` seconds apart."""
    rows = [Row(host=_host_of(u), instance=_host_of(u, port=True), url=u.rstrip("/"), up=False) for u in urls]
    first: dict[int, tuple[float, Scrape]] = {}
    for i, row in enumerate(rows):
        try:
            first[i] = (time.monotonic(), parse_metrics(_get(row.url + "/metrics", timeout).text))
        except (StatusError, ValueError) as exc:
            row.error = str(exc)
    if first and interval > 0:
        time.sleep(interval)
    for i, (t0, a) in first.items():
        row = rows[i]
        try:
            t1, b = time.monotonic(), parse_metrics(_get(row.url + "/metrics", timeout).text)
        except (StatusError, ValueError) as exc:
            row.error = str(exc)
            continue
        row.up = True
        row.model = b.model
        row.running = b.gauges.get(mon.RUNNING)
        row.waiting = b.gauges.get(mon.WAITING)
        row.kv_cache_usage = b.gauges.get(mon.KV_USAGE, b.gauges.get(mon.KV_USAGE_OLD))
        gen = mon.GENERATION_TOKENS
        if gen in a.counters and gen in b.counters and t1 > t0:
            row.tokens_per_s = max(0.0, b.counters[gen] - a.counters[gen]) / (t1 - t0)
        delta = {le: b.ttft_buckets[le] - a.ttft_buckets.get(le, 0.0) for le in b.ttft_buckets}
        window = list(delta.items()) if delta and max(delta.values()) > 0 else list(b.ttft_buckets.items())
        row.ttft_p99_s = bucket_quantile(0.99, window)
    return rows


def _host_of(url: str, port: bool = False) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return (parts.netloc if port else parts.hostname) or url


# ---- from Prometheus ---------------------------------------------------------------------------------------------


def prometheus_queries() -> dict[str, str]:
    """The instant queries `status` sends (each result keyed by host and instance_name)."""
    v = f'job="{mon.JOB_VLLM}"'
    by = "by (host, instance_name)"
    return {
        "up": f"up{{{v}}}",
        "running": f"sum {by} ({mon.RUNNING}{{{v}}})",
        "waiting": f"sum {by} ({mon.WAITING}{{{v}}})",
        "kv_cache_usage": f"max {by} ({mon.KV_USAGE}{{{v}}} or {mon.KV_USAGE_OLD}{{{v}}})",
        "tokens_per_s": f"sum {by} (rate({mon.GENERATION_TOKENS}{{{v}}}[1m]))",
        "ttft_p99_s": mon.ttft_p99("5m"),
        "model": f"count by (host, instance_name, model_name) ({mon.RUNNING}{{{v}}})",
    }


def restarts_query() -> str:
    """Restarts in the last hour; 0 for a counter with one sample yet (increase() needs two)."""
    m = mon.WATCHDOG_RESTARTS
    return f"sum by (host, container) (increase({m}[1h])) or sum by (host, container) (0 * {m})"


def _query(base: str, expr: str, timeout: float) -> list[dict[str, Any]]:
    resp = _get(f"{base}/api/v1/query", timeout, params={"query": expr})
    try:
        body = resp.json()
    except ValueError:
        raise StatusError(f"{base}/api/v1/query: the answer is not JSON: is {base} Prometheus?") from None
    if body.get("status") != "success":
        raise StatusError(f"{base}: query {expr!r} failed: {body.get('error')}")
    return body["data"]["result"]


def rows_from_results(results: dict[str, list[dict[str, Any]]], restarts: list[dict[str, Any]]) -> list[Row]:
    """Rows from Prometheus's instant-query results (pure: the unit tests feed recorded answers)."""
    rows: dict[tuple[str, str], Row] = {}
    for r in results.get("up", []):
        m = r["metric"]
        key = (m.get("host", ""), m.get("instance_name", ""))
        rows[key] = Row(host=key[0], instance=key[1], url="http://" + m.get("instance", ""),
                        up=float(r["value"][1]) == 1.0)
    for field in ("running", "waiting", "kv_cache_usage", "tokens_per_s", "ttft_p99_s"):
        for r in results.get(field, []):
            m = r["metric"]
            row = rows.get((m.get("host", ""), m.get("instance_name", "")))
            value = float(r["value"][1])
            if row is not None and row.up and not math.isnan(value):
                setattr(row, field, value)
    for r in results.get("model", []):
        m = r["metric"]
        row = rows.get((m.get("host", ""), m.get("instance_name", "")))
        if row is not None and row.up:
            row.model = m.get("model_name")
    for r in restarts:
        m = r["metric"]
        row = rows.get((m.get("host", ""), m.get("container", "")))
        if row is not None:
            row.restarts = float(r["value"][1])
    for row in rows.values():
        if row.restarts is None and any(r["metric"].get("host") == row.host for r in restarts):
            row.restarts = 0.0
        if not row.up:
            row.error = "Prometheus cannot scrape its /metrics (up == 0)"
    return sorted(rows.values(), key=lambda r: (r.host, r.instance))


def prometheus_rows(base: str, timeout: float) -> list[Row]:
    base = base.rstrip("/")
    results = {field: _query(base, expr, timeout) for field, expr in prometheus_queries().items()}
    rows = rows_from_results(results, _query(base, restarts_query(), timeout))
    if not rows:
        raise StatusError(f"{base}: Prometheus has no vLLM targets (job=\"{mon.JOB_VLLM}\"): is it the monitoring "
                          "host gpu-llm deployed?")
    return rows


# ---- output -------------------------------------------------------------------------------------------------------

COLUMNS = ("host", "instance", "up", "model", "running", "waiting", "KV use", "tok/s", "TTFT p99", "restarts")


def _fmt(v: float | None, kind: str = "") -> str:
    if v is None:
        return "-"
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if kind == "s":
        return f"{v:.3f} s"
    return f"{v:g}" if float(v).is_integer() else f"{v:.1f}"


def table_rows(rows: list[Row]) -> list[list[str]]:
    return [[r.host, r.instance, "up" if r.up else "DOWN", r.model or "-", _fmt(r.running), _fmt(r.waiting),
             _fmt(r.kv_cache_usage, "pct"), _fmt(r.tokens_per_s), _fmt(r.ttft_p99_s, "s"), _fmt(r.restarts)]
            for r in rows]


def print_table(rows: list[Row], source: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=f"gpu-llm fleet ({source})")
    for c in COLUMNS:
        table.add_column(c, justify="left" if c in ("host", "instance", "up", "model") else "right")
    for r, cells in zip(rows, table_rows(rows)):
        table.add_row(*cells, style=None if r.up else "red")
    console.print(table)
    for r in rows:
        if r.error:
            console.print(f"[red]{r.host} {r.instance}[/red]: {r.error}", highlight=False)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="one table of the fleet: up, model, load, KV use, tokens/s, TTFT p99, restarts")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prometheus", metavar="URL", help="the monitoring host's Prometheus, e.g. http://10.0.0.9:9090")
    src.add_argument("--endpoints", metavar="URL", nargs="+", help="vLLM endpoints, e.g. http://10.0.0.5:8000")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--interval", type=float, default=2.0,
                   help="with --endpoints: seconds between the two reads of /metrics (tokens/s), default 2")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request (default 10)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source = f"prometheus {args.prometheus}" if args.prometheus else "endpoints"
    try:
        if args.prometheus:
            rows = prometheus_rows(args.prometheus, args.timeout)
        else:
            for url in args.endpoints:
                if not url.startswith(("http://", "https://")):
                    raise StatusError(f"{url}: not a URL (expected http://HOST:PORT)")
            rows = endpoint_rows(args.endpoints, args.interval, args.timeout)
    except StatusError as exc:
        if args.json:
            print(json.dumps({"ok": False, "source": source, "error": str(exc)}))
        print(f"gpu-llm status: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    ok = all(r.up for r in rows)
    if args.json:
        print(json.dumps({"ok": ok, "source": source, "instances": [asdict(r) for r in rows]}, indent=1))
    else:
        print_table(rows, source)
    return 0 if ok else EXIT_DOWN
