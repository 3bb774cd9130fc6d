"""gpu-llm watchdog: restarts a vLLM container whose engine hangs while its /health still answers 200.

Runs on each GPU host as the systemd service gpu-llm-watchdog.service (Python 3.10+ standard library only):

    python3 watchdog.py --config /etc/gpu-llm/watchdog.json [--once]

Own code because nothing we could install does this job: Docker's restart policy only sees a process exit, and vLLM's
/health answers 200 in 1-2 ms while the engine is frozen (measured on an H200 with vLLM 0.26.0:
tests/fixtures/vllm_hang/README.md; vllm-project/vllm#39863, #11996, #19849; the fix proposed in PR #36451 is not
merged). So every `interval` seconds, for each instance in the config file:

  - container not running (stopped by hand, or exited and Docker's restart policy did not bring it back): left alone
    (said once);
  - started less than `start_grace` seconds ago: left alone (the model is loading);
  - progress: `vllm:num_requests_running` > 0 on /metrics and `vllm:generation_tokens_total` has not advanced for
    `stall_seconds` -> hung (while frozen, every vLLM metric keeps its last value: tests/fixtures/vllm_hang/);
  - liveness when idle (nothing running): a chat completion of 1 token; `probe_failures` consecutive failures
    (timeout after `probe_timeout` s, connection refused, HTTP 5xx; /metrics not answering counts the same) -> hung;
  - hung -> `docker restart <container>`, unless `max_restarts_per_hour` restarts of it happened in the last hour:
    then it is left for a human, said loudly (level CRITICAL) once.

Every action and its reason goes to stdout (the journal) and to the log file. The API key is read from the
instance's 0600 env file (VLLM_API_KEY=...), never from the config or a command line. Restart times are kept in a
state file so the budget holds across restarts of the watchdog itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

HOUR = 3600.0
RUNNING = "vllm:num_requests_running"
GENERATED = "vllm:generation_tokens_total"
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(?P<value>\S+)")

log = logging.getLogger("gpu-llm-watchdog")


# ---- pure parts ------------------------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {metric name: sum over its label sets} (vLLM labels every series engine=, model_name=)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        out[m["name"]] = out.get(m["name"], 0.0) + value
    return out


def parse_started_at(text: str) -> float | None:
    """Docker's State.StartedAt (RFC 3339, nanoseconds, Z) -> epoch seconds; None for the zero time or junk."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text.strip())
    if not m or m[1].startswith("0001-"):
        return None
    base = datetime.strptime(m[1], "%Y-%m-%dT%H:%M:%S")
    if m[3] == "Z":
        base = base.replace(tzinfo=timezone.utc)
    else:
        sign = 1 if m[3][0] == "+" else -1
        hours, minutes = int(m[3][1:3]), int(m[3][4:6])
        base = base.replace(tzinfo=timezone.utc)
        base = base.fromtimestamp(base.timestamp() - sign * (hours * 3600 + minutes * 60), timezone.utc)
    return base.timestamp() + (float("0." + m[2]) if m[2] else 0.0)


@dataclass
class Track:
    """What the watchdog remembers about one instance between ticks."""

    started: float | None = None  # container start the rest refers to
    tokens: float | None = None  # last generation_tokens_total seen
    advanced_at: float | None = None  # when it last moved (or when running > 0 was first seen)
    failures: int = 0  # consecutive failed liveness probes
    restarts: list[float] = field(default_factory=list)  # epoch seconds of our restarts of it
    total: int = 0  # restarts of it since the watchdog was installed (gpu_llm_watchdog_restarts_total)
    said: str = ""  # last "left alone" message, said once


@dataclass(frozen=True)
class Observation:
    """One tick's look at an instance (filled in by the I/O side)."""

    now: float
    running_container: bool
    started: float | None
    metrics: dict[str, float] | None  # None: /metrics did not answer
    probe_ok: bool | None = None  # liveness probe result when one was sent (None: not sent)
    probe_error: str = ""


def needs_probe(track: Track, obs: Observation, start_grace: float) -> bool:
    """Whether this tick must send the 1-token liveness probe: idle (nothing running) or /metrics silent."""
    if not obs.running_container or obs.started is None or obs.now - obs.started < start_grace:
        return False
    return obs.metrics is None or obs.metrics.get(RUNNING, 0.0) <= 0


def decide(track: Track, obs: Observation, *, stall_seconds: float, start_grace: float, probe_failures: int,
           max_restarts_per_hour: int) -> tuple[str, str]:
    """(action, reason): action is "ok", "skip", "restart" or "budget" (hung, but the budget is spent).

    Updates `track` (pure apart from that: no clock, no I/O)."""
    if obs.started != track.started:  # a new start (ours, Docker's or a human's): forget the old engine
        track.started, track.tokens, track.advanced_at, track.failures = obs.started, None, None, 0
    if not obs.running_container:
        return "skip", "container is not running: left alone (Docker's restart policy or a human owns it)"
    if obs.started is None or obs.now - obs.started < start_grace:
        return "skip", f"started {0 if obs.started is None else obs.now - obs.started:.0f}s ago, within the " \
                       f"{start_grace:.0f}s start grace"
    hung = ""
    m = obs.metrics
    if m is not None and m.get(RUNNING, 0.0) > 0:
        track.failures = 0
        tokens = m.get(GENERATED, 0.0)
        if track.tokens is None or tokens != track.tokens or track.advanced_at is None:
            track.tokens, track.advanced_at = tokens, obs.now
        stalled = obs.now - track.advanced_at
        if stalled >= stall_seconds:
            hung = (f"stall: {RUNNING}={m[RUNNING]:g} but {GENERATED} stuck at {tokens:g} for {stalled:.0f}s "
                    f"(watchdog_stall_seconds={stall_seconds:g})")
    else:
        track.tokens = m.get(GENERATED) if m is not None else track.tokens
        track.advanced_at = None
        if obs.probe_ok:
            track.failures = 0
        elif obs.probe_ok is False:
            track.failures += 1
            if track.failures >= probe_failures:
                hung = (f"liveness probe: {track.failures} consecutive 1-token chat completions failed "
                        f"(last: {obs.probe_error}; watchdog_probe_failures={probe_failures})"
                        + ("" if m is not None else "; /metrics does not answer either"))
    if not hung:
        return "ok", ""
    track.restarts = [t for t in track.restarts if obs.now - t < HOUR]
    if len(track.restarts) >= max_restarts_per_hour:
        return "budget", (f"{hung}; NOT restarting: restart budget spent ({len(track.restarts)} restarts in the last "
                          f"hour, watchdog_max_restarts_per_hour={max_restarts_per_hour}); leaving the container "
                          "for a human")
    return "restart", hung


# ---- I/O -------------------------------------------------------------------------------------------------------


def read_key(env_file: str | None) -> str | None:
    if not env_file:
        return None
    try:
        with open(env_file, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VLLM_API_KEY="):
                    return line.split("=", 1)[1].strip() or None
    except OSError:
        return None
    return None


def container_state(name: str) -> tuple[bool, float | None]:
    try:
        out = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}} {{.State.StartedAt}}", name],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False, None
    if out.returncode != 0:
        return False, None
    running, _, started = out.stdout.strip().partition(" ")
    return running == "true", parse_started_at(started)


def get_metrics(port: int, timeout: float) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
            return parse_metrics(resp.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None


def probe_chat(port: int, model: str, key: str | None, timeout: float) -> tuple[bool, str]:
    """One chat completion of 1 token; (ok, error). A 4xx other than 408/429 is a configuration problem, not a
    hang: it passes (and is logged by the caller's tick)."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
        return True, ""
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code in (408, 429):
            return False, f"HTTP {exc.code}"
        log.warning("instance on port %s: liveness probe got HTTP %s (not a hang; check the API key/model)",
                    port, exc.code)
        return True, ""
    except TimeoutError:
        return False, f"no answer within {timeout:g}s (watchdog_probe_timeout)"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            return False, f"no answer within {timeout:g}s (watchdog_probe_timeout)"
        return False, f"{type(reason).__name__}: {reason}"


def restart(name: str) -> tuple[bool, str]:
    try:
        out = subprocess.run(["docker", "restart", name], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return out.returncode == 0, (out.stderr or out.stdout).strip()


def load_state(path: str) -> dict[str, list[float]]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return {k: [float(t) for t in v] for k, v in data.get("restarts", {}).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def load_totals(path: str) -> dict[str, int]:
    """Restarts by the watchdog since it was installed, per container (the counter the monitoring scrapes)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return {k: int(v) for k, v in json.load(fh).get("totals", {}).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def save_state(path: str, tracks: dict[str, Track]) -> None:
    tmp = path + ".tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"restarts": {name: t.restarts for name, t in tracks.items()},
                       "totals": {name: t.total for name, t in tracks.items()}}, fh)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write the state file %s: %s", path, exc)


METRIC = "gpu_llm_watchdog_restarts_total"


def metrics_text(tracks: dict[str, Track]) -> str:
    """Prometheus text for the node exporter's textfile collector: one counter per watched container."""
    lines = [f"# HELP {METRIC} Restarts of a hung vLLM container by the gpu-llm watchdog.", f"# TYPE {METRIC} counter"]
    lines += [f'{METRIC}{{container="{name}"}} {t.total}' for name, t in sorted(tracks.items())]
    return "\n".join(lines) + "\n"


def write_metrics(path: str | None, tracks: dict[str, Track]) -> None:
    """The counter file in the node exporter's textfile directory, when that directory exists (written whole and
    renamed into place, as the collector's documentation asks)."""
    if not path or not os.path.isdir(os.path.dirname(path)):
        return
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            fh.write(metrics_text(tracks))
        os.chmod(path + ".tmp", 0o644)
        os.replace(path + ".tmp", path)
    except OSError as exc:
        log.warning("cannot write the metrics file %s: %s", path, exc)


def tick(config: dict[str, Any], tracks: dict[str, Track], state_file: str) -> None:
    settings = config["settings"]
    for inst in config["instances"]:
        name = inst["container"]
        track = tracks.setdefault(name, Track())
        now = time.time()
        running, started = container_state(name)
        metrics = get_metrics(inst["port"], settings["probe_timeout"]) if running else None
        obs = Observation(now, running, started, metrics)
        if needs_probe(track, obs, settings["start_grace"]):
            ok, error = probe_chat(inst["port"], inst["model"], read_key(inst.get("env_file")),
                                   settings["probe_timeout"])
            obs = Observation(now, running, started, metrics, ok, error)
        action, reason = decide(track, obs, stall_seconds=settings["stall_seconds"],
                                start_grace=settings["start_grace"], probe_failures=settings["probe_failures"],
                                max_restarts_per_hour=settings["max_restarts_per_hour"])
        if action == "restart":
            log.warning("%s (port %s): hung: %s; restarting it (docker restart)", name, inst["port"], reason)
            ok, out = restart(name)
            track.restarts.append(time.time())
            track.total += 1
            track.said = ""
            save_state(state_file, tracks)
            if ok:
                log.warning("%s: restarted (%d restart(s) by the watchdog in the last hour)", name, len(track.restarts))
            else:
                log.error("%s: docker restart failed: %s", name, out)
        elif action == "budget":
            if track.said != "budget":
                log.critical("%s (port %s): hung: %s", name, inst["port"], reason)
                track.said = "budget"
        elif action == "skip":
            key = "stopped" if "not running" in reason else "grace"
            if track.said != key:
                log.info("%s: %s", name, reason)
                track.said = key
        elif track.said:
            log.info("%s (port %s): engine answers again; watching", name, inst["port"])
            track.said = ""
    # every tick: the textfile directory may appear after the watchdog started (the node exporter installed later),
    # and the counter must exist at 0 before a first restart for increase() to count that restart
    write_metrics(settings.get("metrics_file"), tracks)


def setup_logging(log_file: str | None) -> None:
    log.setLevel(logging.INFO)
    out = logging.StreamHandler(sys.stdout)  # the journal adds its own timestamps
    out.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(out)
    if log_file:
        try:
            os.makedirs(os.path.dirname(log_file), exist_ok=True)
            fh = logging.FileHandler(log_file)
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(fh)
        except OSError as exc:
            log.warning("cannot open the log file %s: %s (logging to the journal only)", log_file, exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", default="/etc/gpu-llm/watchdog.json")
    parser.add_argument("--once", action="store_true", help="one tick, then exit")
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as fh:
        config = json.load(fh)
    setup_logging(config.get("log_file"))
    state_file = config.get("state_file", "/var/lib/gpu-llm/watchdog-state.json")
    totals = load_totals(state_file)
    tracks = {name: Track(restarts=times, total=totals.get(name, 0)) for name, times in load_state(state_file).items()}
    for inst in config["instances"]:
        tracks.setdefault(inst["container"], Track())
    s = config["settings"]
    write_metrics(s.get("metrics_file"), tracks)
    log.info("watching %s every %ss (stall %ss, start grace %ss, probe timeout %ss x %s, at most %s restarts/hour)",
             ", ".join(f"{i['container']}:{i['port']}" for i in config["instances"]) or "nothing", s["interval"],
             s["stall_seconds"], s["start_grace"], s["probe_timeout"], s["probe_failures"],
             s["max_restarts_per_hour"])
    while True:
        t0 = time.monotonic()
        try:
            tick(config, tracks, state_file)
        except Exception as exc:  # noqa: BLE001 -- a watchdog that dies on one odd answer watches nothing
            log.exception("tick failed: %s", exc)
        if args.once:
            return 0
        time.sleep(max(0.5, s["interval"] - (time.monotonic() - t0)))


if __name__ == "__main__":
    sys.exit(main())
