"""Monitoring of the fleet, pure: who scrapes whom (targets from the inventory), Prometheus's configuration and alert
rules, Grafana's provisioning and the fleet overview dashboard. No pyinfra, no I/O.

Hosts in inventory group `monitoring` run Prometheus (Ubuntu's `prometheus` package) and Grafana (Grafana's apt
repository); every GPU host runs Ubuntu's `prometheus-node-exporter` and NVIDIA's DCGM exporter. What is scraped:
  - every vLLM instance's /metrics (vLLM's `--api-key` guards only /v1/*, so /metrics needs no key:
    vllm-project/vllm#18893 lists the routes outside it);
  - every GPU host's node exporter (which also reads the watchdog's restart counter from its textfile directory);
  - every GPU host's DCGM exporter (GPU utilisation, framebuffer memory, temperature: DCGM_FI_DEV_* names from
    https://github.com/NVIDIA/dcgm-exporter/blob/main/etc/default-counters.csv);
  - every gateway's vllm-router metrics (--prometheus-host/--prometheus-port).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from gpu_llm import gateway as gw

MONITORING = "monitoring"  # inventory group whose hosts run Prometheus and Grafana (interface: keep the name)
DATASOURCE_UID = "gpu-llm-prometheus"
FLEET_DASHBOARD_UID = "gpu-llm-fleet"
# Prometheus job names (the `job` label); the dashboard, the alert rules and `gpu-llm status` select on them.
JOB_VLLM, JOB_NODE, JOB_GPU, JOB_GATEWAY = "vllm", "node", "dcgm", "gateway"
# The watchdog's restart counter, written to the node exporter's textfile directory on each GPU host
# (gpu_llm/remote/watchdog.py); Ubuntu's node exporter reads /var/lib/prometheus/node-exporter/*.prom
# (its /etc/default/prometheus-node-exporter and the Debian patch setting --collector.textfile.directory).
WATCHDOG_RESTARTS = "gpu_llm_watchdog_restarts_total"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"

# vLLM's metric names (as vLLM 0.26.0 exports them: tests/fixtures/vllm_hang/metrics_load.txt; the same names since
# the V1 engine's metrics, vllm/v1/metrics/loggers.py). Older releases called the KV-cache gauge gpu_cache_usage_perc.
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
KV_USAGE_OLD = "vllm:gpu_cache_usage_perc"
GENERATION_TOKENS = "vllm:generation_tokens_total"
TTFT = "vllm:time_to_first_token_seconds"
# TPOT per request (vLLM 0.26.0); releases before the V1 metrics rework had vllm:time_per_output_token_seconds
TPOT = "vllm:request_time_per_output_token_seconds"
TPOT_OLD = "vllm:time_per_output_token_seconds"
# DCGM exporter's default counters (https://github.com/NVIDIA/dcgm-exporter/blob/main/etc/default-counters.csv)
GPU_UTIL, GPU_FB_USED, GPU_FB_FREE, GPU_TEMP = ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE",
                                                "DCGM_FI_DEV_GPU_TEMP")


def is_monitoring(groups: Iterable[str]) -> bool:
    return MONITORING in set(groups)


def resolve_bind(setting: str, address: str, fallback: str) -> str:
    """`setting` unless "auto"; "auto": `address` (the host's inventory address) when it is a private IP literal,
    else `fallback` (127.0.0.1 for what only an operator opens, 0.0.0.0 for what the monitoring host scrapes)."""
    if setting != "auto":
        return setting
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return fallback
    return str(ip) if ip.is_private and not ip.is_loopback else fallback


def _hostport(address: str, port: int) -> str:
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]:{port}"
    except ValueError:
        pass
    return f"{address}:{port}"


@dataclass(frozen=True)
class Target:
    job: str
    address: str  # host:port as Prometheus scrapes it (its `instance` label)
    labels: dict[str, str]


def instance_names(s: Any) -> list[str]:
    """The container names of a GPU host's instances, in the order of gateway.instance_ports."""
    return [str(i["name"]) for i in s.vllm_instances] if s.vllm_instances else [s.vllm_container_name]


def targets(fleet: list[gw.FleetHost], s: Any) -> list[Target]:
    """Everything the monitoring host scrapes, from the inventory (`s`: the monitoring host's settings)."""
    out: list[Target] = []
    for h in fleet:
        if gw.is_gpu_host(h.groups):
            for name, port in zip(instance_names(h.settings), gw.instance_ports(h.settings)):
                out.append(Target(JOB_VLLM, _hostport(h.address, port), {"host": h.name, "instance_name": name}))
            out.append(Target(JOB_NODE, _hostport(h.address, h.settings.monitoring_node_exporter_port),
                              {"host": h.name}))
            if h.settings.monitoring_gpu_exporter:
                out.append(Target(JOB_GPU, _hostport(h.address, h.settings.monitoring_gpu_exporter_port),
                                  {"host": h.name}))
        if gw.is_gateway(h.groups):
            out.append(Target(JOB_GATEWAY, _hostport(h.address, h.settings.gateway_metrics_port), {"host": h.name}))
    return sorted(out, key=lambda t: (t.job, t.labels["host"], t.address))


RULES_FILE = "/etc/prometheus/gpu-llm-rules.yml"


def prometheus_config(tgts: list[Target], s: Any, self_address: str) -> str:
    """/etc/prometheus/prometheus.yml: one job per kind of target, one static_config per target (its labels)."""
    interval = f"{s.monitoring_scrape_interval}s"
    jobs: dict[str, list[dict[str, Any]]] = {}
    for t in tgts:
        jobs.setdefault(t.job, []).append({"targets": [t.address], "labels": dict(t.labels)})
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [RULES_FILE],
        "scrape_configs": [{"job_name": "prometheus", "static_configs": [{"targets": [self_address]}]}]
        + [{"job_name": job, "metrics_path": "/metrics", "static_configs": configs}
           for job, configs in sorted(jobs.items())],
    }
    return "# gpu-llm: managed by pyinfra (gpu_llm/deploys/monitoring.py); edits are overwritten\n" + \
        yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def _kv_usage() -> str:
    return f"({KV_USAGE} or {KV_USAGE_OLD})"


def ttft_p99(window: str = "5m") -> str:
    return (f"histogram_quantile(0.99, sum by (le, host, instance_name) "
            f"(rate({TTFT}_bucket{{job=\"{JOB_VLLM}\"}}[{window}])))")


def alert_rules(s: Any) -> str:
    """Prometheus alerting rules: instance down, watchdog restarted something, KV cache > 90 % for 10 minutes,
    TTFT p99 over monitoring_ttft_p99_alert; plus an exporter down."""
    down_for = f"{max(2 * s.monitoring_scrape_interval, 30)}s"
    rules = [
        {"alert": "VllmInstanceDown", "expr": f'up{{job="{JOB_VLLM}"}} == 0', "for": down_for,
         "labels": {"severity": "critical"},
         "annotations": {"summary": "vLLM instance {{ $labels.instance_name }} on {{ $labels.host }} is down",
                         "description": "Prometheus cannot scrape {{ $labels.instance }}/metrics."}},
        {"alert": "WatchdogRestartedInstance", "expr": f"increase({WATCHDOG_RESTARTS}[15m]) > 0",
         "labels": {"severity": "warning"},
         "annotations": {"summary": "the hang watchdog restarted {{ $labels.container }} on {{ $labels.host }}",
                         "description": "See /var/log/gpu-llm/watchdog.log on the host."}},
        {"alert": "VllmKvCacheFull", "expr": f"{_kv_usage()} > 0.9", "for": "10m",
         "labels": {"severity": "warning"},
         "annotations": {"summary": "KV cache of {{ $labels.instance_name }} on {{ $labels.host }} above 90% "
                                    "for 10 minutes"}},
        {"alert": "VllmTtftP99High", "expr": f"{ttft_p99()} > {s.monitoring_ttft_p99_alert:g}", "for": "5m",
         "labels": {"severity": "warning"},
         "annotations": {"summary": "time to first token p99 of {{ $labels.instance_name }} on {{ $labels.host }} "
                                    f"above {s.monitoring_ttft_p99_alert:g} s"}},
        {"alert": "ExporterDown", "expr": f'up{{job=~"{JOB_NODE}|{JOB_GPU}|{JOB_GATEWAY}"}} == 0', "for": "5m",
         "labels": {"severity": "warning"},
         "annotations": {"summary": "{{ $labels.job }} exporter on {{ $labels.host }} is down"}},
    ]
    return "# gpu-llm: managed by pyinfra (gpu_llm/deploys/monitoring.py); edits are overwritten\n" + \
        yaml.safe_dump({"groups": [{"name": "gpu-llm", "rules": rules}]}, sort_keys=False)


def prometheus_args(s: Any, bind: str) -> str:
    """ARGS of /etc/default/prometheus (Ubuntu's unit runs `prometheus $ARGS`)."""
    return (f'ARGS="--web.listen-address={_hostport(bind, s.monitoring_prometheus_port)} '
            f'--storage.tsdb.retention.time={s.monitoring_retention}"\n')


def node_exporter_args(bind: str, port: int) -> str:
    """ARGS of /etc/default/prometheus-node-exporter (Ubuntu's unit runs `prometheus-node-exporter $ARGS`)."""
    return f'ARGS="--web.listen-address={_hostport(bind, port)} --collector.textfile.directory={TEXTFILE_DIR}"\n'


# ---- Grafana ----------------------------------------------------------------------------------------------------

GRAFANA_DASHBOARDS_DIR = "/var/lib/grafana/dashboards/gpu-llm"


def grafana_datasource(prometheus_url: str) -> str:
    """/etc/grafana/provisioning/datasources/gpu-llm.yaml (Grafana's provisioning format, apiVersion 1:
    https://grafana.com/docs/grafana/latest/administration/provisioning/#data-sources)."""
    return yaml.safe_dump({"apiVersion": 1, "datasources": [{
        "name": "Prometheus (gpu-llm)", "type": "prometheus", "uid": DATASOURCE_UID, "access": "proxy",
        "url": prometheus_url, "isDefault": True, "editable": False}]}, sort_keys=False)


def grafana_dashboard_provider() -> str:
    """/etc/grafana/provisioning/dashboards/gpu-llm.yaml: dashboards from files in GRAFANA_DASHBOARDS_DIR
    (https://grafana.com/docs/grafana/latest/administration/provisioning/#dashboards)."""
    return yaml.safe_dump({"apiVersion": 1, "providers": [{
        "name": "gpu-llm", "type": "file", "folder": "gpu-llm", "disableDeletion": True,
        "allowUiUpdates": False, "options": {"path": GRAFANA_DASHBOARDS_DIR}}]}, sort_keys=False)


def grafana_env(s: Any, bind: str, password: str) -> str:
    """Environment of grafana-server (GF_<SECTION>_<KEY> overrides grafana.ini:
    https://grafana.com/docs/grafana/latest/setup-grafana/configure-grafana/#override-configuration-with-environment-variables).
    Holds the admin password: written 0600, never printed."""
    return (f"GF_SERVER_HTTP_ADDR={bind}\nGF_SERVER_HTTP_PORT={s.monitoring_grafana_port}\n"
            f"GF_SECURITY_ADMIN_USER=admin\nGF_SECURITY_ADMIN_PASSWORD={password}\n"
            "GF_ANALYTICS_REPORTING_ENABLED=false\nGF_ANALYTICS_CHECK_FOR_UPDATES=false\n")


def _panel(pid: int, title: str, exprs: list[tuple[str, str]], x: int, y: int, unit: str = "short",
           w: int = 12, h: int = 8, kind: str = "timeseries") -> dict[str, Any]:
    ds = {"type": "prometheus", "uid": DATASOURCE_UID}
    return {"id": pid, "type": kind, "title": title, "datasource": ds,
            "gridPos": {"h": h, "w": w, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True}},
            "targets": [{"refId": chr(ord("A") + i), "datasource": ds, "expr": expr, "legendFormat": legend,
                         "range": True} for i, (expr, legend) in enumerate(exprs)]}


def fleet_panels() -> list[dict[str, Any]]:
    """The fleet overview: per host and instance, up, running/waiting, KV use, TTFT/TPOT p50/p99, output tokens/s,
    GPU utilisation/memory/temperature, watchdog restarts."""
    inst = "{{host}} {{instance_name}}"
    vllm = f'job="{JOB_VLLM}"'

    def q(p: str, metric: str) -> str:
        return (f"histogram_quantile({p}, sum by (le, host, instance_name) "
                f"(rate({metric}_bucket{{{vllm}}}[$__rate_interval])))")

    specs = [
        ("Instances up", [(f"up{{{vllm}}}", inst)], "none"),
        ("Requests running", [(f"sum by (host, instance_name) ({RUNNING}{{{vllm}}})", inst)], "none"),
        ("Requests waiting", [(f"sum by (host, instance_name) ({WAITING}{{{vllm}}})", inst)], "none"),
        ("KV-cache use", [(f"max by (host, instance_name) ({_kv_usage()})", inst)], "percentunit"),
        ("Time to first token p50 / p99", [(q("0.5", TTFT), inst + " p50"), (q("0.99", TTFT), inst + " p99")], "s"),
        ("Time per output token p50 / p99", [(q("0.5", TPOT) + " or " + q("0.5", TPOT_OLD), inst + " p50"),
                                             (q("0.99", TPOT) + " or " + q("0.99", TPOT_OLD), inst + " p99")], "s"),
        ("Output tokens/s", [(f"sum by (host, instance_name) (rate({GENERATION_TOKENS}{{{vllm}}}"
                              "[$__rate_interval]))", inst)], "short"),
        ("Watchdog restarts (1 h)", [(f"sum by (host, container) (increase({WATCHDOG_RESTARTS}[1h]))",
                                      "{{host}} {{container}}")], "none"),
        ("GPU utilisation", [(f"{GPU_UTIL}", "{{host}} GPU {{gpu}}")], "percent"),
        ("GPU memory used", [(f"{GPU_FB_USED} / ({GPU_FB_USED} + {GPU_FB_FREE})", "{{host}} GPU {{gpu}}")],
         "percentunit"),
        ("GPU temperature", [(f"{GPU_TEMP}", "{{host}} GPU {{gpu}}")], "celsius"),
        ("Exporters up", [(f'up{{job!="{JOB_VLLM}"}}', "{{job}} {{host}}")], "none"),
    ]
    return [_panel(i + 1, title, exprs, x=12 * (i % 2), y=8 * (i // 2), unit=unit)
            for i, (title, exprs, unit) in enumerate(specs)]


def fleet_dashboard() -> dict[str, Any]:
    """Grafana dashboard JSON model (https://grafana.com/docs/grafana/latest/dashboards/build-dashboards/
    view-dashboard-json-model/): uid, title, schemaVersion, panels with gridPos and targets."""
    return {"uid": FLEET_DASHBOARD_UID, "title": "gpu-llm fleet", "tags": ["gpu-llm", "vllm"],
            "timezone": "browser", "schemaVersion": 39, "version": 1, "editable": False, "refresh": "10s",
            "time": {"from": "now-1h", "to": "now"}, "panels": fleet_panels(), "templating": {"list": []},
            "annotations": {"list": []}}


def dashboard_problems(d: Any) -> list[str]:
    """What keeps a dashboard JSON from loading as Grafana's dashboard model expects (empty: it loads)."""
    problems = []
    if not isinstance(d, dict):
        return ["not a JSON object"]
    for key, kind in (("title", str), ("panels", list)):
        if not isinstance(d.get(key), kind):
            problems.append(f"{key}: missing or not a {kind.__name__}")
    if "uid" in d and not (isinstance(d["uid"], str) and 0 < len(d["uid"]) <= 40):
        problems.append("uid: must be a string of 1-40 characters")
    if not isinstance(d.get("schemaVersion", 0), int):
        problems.append("schemaVersion: not an integer")
    ids = set()
    for i, p in enumerate(d.get("panels") or []):
        if not isinstance(p, dict) or not isinstance(p.get("type"), str):
            problems.append(f"panels[{i}]: no type")
            continue
        grid = p.get("gridPos")
        if not (isinstance(grid, dict) and all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y"))):
            problems.append(f"panels[{i}] ({p.get('title')}): gridPos needs integers h, w, x, y")
        if p.get("id") in ids:
            problems.append(f"panels[{i}]: duplicate id {p.get('id')}")
        ids.add(p.get("id"))
        for t in p.get("targets") or []:
            if p.get("type") != "row" and not (isinstance(t, dict) and isinstance(t.get("refId"), str)):
                problems.append(f"panels[{i}] ({p.get('title')}): a target without refId")
    return problems


def dashboard_exprs(d: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard (nested rows included)."""
    out: list[str] = []
    for p in d.get("panels") or []:
        out += [t["expr"] for t in p.get("targets") or [] if isinstance(t, dict) and t.get("expr")]
        out += dashboard_exprs({"panels": p.get("panels") or []})
    return out


def dashboard_json(d: dict[str, Any]) -> bytes:
    return (json.dumps(d, indent=1, sort_keys=True) + "\n").encode()


def provisioned_vllm_dashboard(raw: dict[str, Any]) -> dict[str, Any]:
    """vLLM's exported dashboard made loadable by file provisioning: its `${DS_PROMETHEUS}` input bound to our data
    source (file provisioning does not resolve __inputs), its database id dropped."""
    text = json.dumps(raw).replace("${DS_PROMETHEUS}", DATASOURCE_UID)
    d = json.loads(text)
    d.pop("__inputs", None)
    d.pop("__requires", None)
    d["id"] = None
    return d
