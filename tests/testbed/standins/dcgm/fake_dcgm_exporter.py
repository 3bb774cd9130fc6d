#!/usr/bin/env python3
"""Stand-in for NVIDIA's DCGM exporter (nvcr.io/nvidia/k8s/dcgm-exporter) in the testbed's GPU hosts.

Serves GET /metrics on :9400 (the exporter's default, DCGM_EXPORTER_LISTEN) with the default counters' names and
labels the monitoring reads (https://github.com/NVIDIA/dcgm-exporter/blob/main/etc/default-counters.csv):
DCGM_FI_DEV_GPU_UTIL (%), DCGM_FI_DEV_FB_USED / DCGM_FI_DEV_FB_FREE (MiB), DCGM_FI_DEV_GPU_TEMP (C), labelled
gpu, UUID, device, modelName, Hostname. Values move (a slow random walk). The GPUs: /etc/gpu-llm-testbed/gpus.json
when mounted, else one H200. No DCGM, no NVML: nothing is measured.
"""

from __future__ import annotations

import json
import os
import random
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GPUS_FILE = "/etc/gpu-llm-testbed/gpus.json"


def gpus() -> list[dict]:
    try:
        with open(GPUS_FILE, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return [{"name": "NVIDIA H200", "memory_mib": 143771, "uuid": "GPU-00000000-0000-0000-0000-000000000000"}]


class Walk:
    def __init__(self) -> None:
        self.values: dict[tuple[int, str], float] = {}

    def step(self, key: tuple[int, str], lo: float, hi: float) -> float:
        v = self.values.get(key, random.uniform(lo, hi))
        v = min(hi, max(lo, v + random.uniform(-(hi - lo) / 10, (hi - lo) / 10)))
        self.values[key] = v
        return v


WALK = Walk()
HELP = {"DCGM_FI_DEV_GPU_UTIL": "GPU utilization (in %).", "DCGM_FI_DEV_FB_USED": "Framebuffer memory used (in MiB).",
        "DCGM_FI_DEV_FB_FREE": "Framebuffer memory free (in MiB).", "DCGM_FI_DEV_GPU_TEMP": "GPU temperature (in C)."}


def metrics() -> str:
    host = socket.gethostname()
    rows: dict[str, list[str]] = {name: [] for name in HELP}
    for i, g in enumerate(gpus()):
        labels = (f'gpu="{i}",UUID="{g.get("uuid", f"GPU-{i}")}",device="nvidia{i}",modelName="{g.get("name", "")}",'
                  f'Hostname="{host}"')
        total = int(g.get("memory_mib", 81920))
        used = int(WALK.step((i, "fb"), 0.05 * total, 0.95 * total))
        rows["DCGM_FI_DEV_GPU_UTIL"].append(f"DCGM_FI_DEV_GPU_UTIL{{{labels}}} {int(WALK.step((i, 'util'), 0, 100))}")
        rows["DCGM_FI_DEV_FB_USED"].append(f"DCGM_FI_DEV_FB_USED{{{labels}}} {used}")
        rows["DCGM_FI_DEV_FB_FREE"].append(f"DCGM_FI_DEV_FB_FREE{{{labels}}} {total - used}")
        rows["DCGM_FI_DEV_GPU_TEMP"].append(f"DCGM_FI_DEV_GPU_TEMP{{{labels}}} {int(WALK.step((i, 'temp'), 30, 85))}")
    out = []
    for name, lines in rows.items():
        out += [f"# HELP {name} {HELP[name]}", f"# TYPE {name} gauge", *lines]
    return "\n".join(out) + "\n"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path.split("?")[0] != "/metrics":
            self.send_error(404)
            return
        raw = metrics().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    addr, _, port = os.environ.get("DCGM_EXPORTER_LISTEN", ":9400").rpartition(":")
    ThreadingHTTPServer((addr, int(port)), Handler).serve_forever()
