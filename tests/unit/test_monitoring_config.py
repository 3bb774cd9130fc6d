"""Pure monitoring configuration: scrape targets from the inventory, Prometheus's config and rules, Grafana's
provisioning and the fleet dashboard (gpu_llm/monitoring.py)."""

from __future__ import annotations

import json

import pytest
import yaml

from gpu_llm import gateway as gw
from gpu_llm import monitoring as mon
from gpu_llm.settings import SettingsError, from_data


def _fleet() -> list[gw.FleetHost]:
    two = from_data({"vllm_instances": [{"name": "coder-a", "port": 8000, "gpus": [0, 1]},
                                        {"name": "coder-b", "port": 8001, "gpus": [2, 3]}]})
    one = from_data({"monitoring_gpu_exporter": False, "monitoring_node_exporter_port": 9101})
    return [
        gw.FleetHost("gpu1", "10.0.0.5", ("gpu_hosts",), two, "k" * 8),
        gw.FleetHost("gpu2", "10.0.0.6", (), one, "k" * 8),
        gw.FleetHost("gw", "10.0.0.9", ("gateways", "monitoring"), from_data({}), None),
    ]


def test_targets_follow_the_inventory():
    t = mon.targets(_fleet(), from_data({}))
    got = {(x.job, x.address, tuple(sorted(x.labels.items()))) for x in t}
    assert got == {
        ("vllm", "10.0.0.5:8000", (("host", "gpu1"), ("instance_name", "coder-a"))),
        ("vllm", "10.0.0.5:8001", (("host", "gpu1"), ("instance_name", "coder-b"))),
        ("vllm", "10.0.0.6:8000", (("host", "gpu2"), ("instance_name", "coder"))),
        ("node", "10.0.0.5:9100", (("host", "gpu1"),)),
        ("node", "10.0.0.6:9101", (("host", "gpu2"),)),
        ("dcgm", "10.0.0.5:9400", (("host", "gpu1"),)),  # gpu2 turned its GPU exporter off
        ("gateway", "10.0.0.9:29000", (("host", "gw"),)),
    }
    # a host removed from the inventory is no longer scraped
    fewer = mon.targets(_fleet()[1:], from_data({}))
    assert not any(x.labels["host"] == "gpu1" for x in fewer)


def test_prometheus_config_is_yaml_with_every_target_and_the_rules():
    s = from_data({"monitoring_scrape_interval": 5})
    text = mon.prometheus_config(mon.targets(_fleet(), s), s, "127.0.0.1:9090")
    cfg = yaml.safe_load(text)
    assert cfg["global"] == {"scrape_interval": "5s", "evaluation_interval": "5s"}
    assert cfg["rule_files"] == [mon.RULES_FILE]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"prometheus", "vllm", "node", "dcgm", "gateway"}
    vllm = [(c["targets"], c["labels"]) for c in jobs["vllm"]["static_configs"]]
    assert (["10.0.0.5:8001"], {"host": "gpu1", "instance_name": "coder-b"}) in vllm
    assert len(vllm) == 3


def test_alert_rules_cover_the_issue_and_take_the_ttft_setting():
    rules = yaml.safe_load(mon.alert_rules(from_data({"monitoring_ttft_p99_alert": 2.5})))["groups"][0]["rules"]
    by = {r["alert"]: r for r in rules}
    assert by["VllmInstanceDown"]["expr"] == 'up{job="vllm"} == 0'
    assert "gpu_llm_watchdog_restarts_total" in by["WatchdogRestartedInstance"]["expr"]
    assert by["VllmKvCacheFull"]["for"] == "10m" and "> 0.9" in by["VllmKvCacheFull"]["expr"]
    assert by["VllmTtftP99High"]["expr"].endswith("> 2.5")
    assert "histogram_quantile(0.99" in by["VllmTtftP99High"]["expr"]


@pytest.mark.parametrize("setting, address, fallback, want", [
    ("auto", "10.0.0.5", "127.0.0.1", "10.0.0.5"),
    ("auto", "192.168.1.2", "0.0.0.0", "192.168.1.2"),
    ("auto", "8.8.8.8", "127.0.0.1", "127.0.0.1"),  # a public address: not by default
    ("auto", "gpu1.example.internal", "0.0.0.0", "0.0.0.0"),
    ("auto", "127.0.0.1", "0.0.0.0", "0.0.0.0"),
    ("10.1.1.1", "10.0.0.5", "127.0.0.1", "10.1.1.1"),
])
def test_bind_auto_prefers_the_private_inventory_address(setting, address, fallback, want):
    assert mon.resolve_bind(setting, address, fallback) == want


def test_bad_monitoring_settings_are_refused_naming_the_key():
    for data, key in [({"monitoring_retention": "15 days"}, "monitoring_retention"),
                      ({"monitoring_bind": "localhost"}, "monitoring_bind"),
                      ({"monitoring_grafana_admin_password": "short"}, "monitoring_grafana_admin_password"),
                      ({"monitoring_grafana_port": 9090}, "monitoring_grafana_port"),
                      ({"monitoring_ttft_p99_alert": 0}, "monitoring_ttft_p99_alert"),
                      ({"monitoring_scrape_intervall": 5}, "monitoring_scrape_intervall")]:
        with pytest.raises(SettingsError) as err:
            from_data(data)
        assert err.value.key == key, data


def test_args_files_set_listen_address_and_retention():
    s = from_data({"monitoring_retention": "30d"})
    assert mon.prometheus_args(s, "10.0.0.9") == \
        'ARGS="--web.listen-address=10.0.0.9:9090 --storage.tsdb.retention.time=30d"\n'
    assert "--web.listen-address=10.0.0.5:9100" in mon.node_exporter_args("10.0.0.5", 9100)
    assert f"--collector.textfile.directory={mon.TEXTFILE_DIR}" in mon.node_exporter_args("10.0.0.5", 9100)


def test_grafana_provisioning_points_at_our_prometheus_and_dashboards():
    ds = yaml.safe_load(mon.grafana_datasource("http://10.0.0.9:9090"))
    assert ds["apiVersion"] == 1
    assert ds["datasources"][0]["uid"] == mon.DATASOURCE_UID
    assert ds["datasources"][0]["url"] == "http://10.0.0.9:9090"
    prov = yaml.safe_load(mon.grafana_dashboard_provider())
    assert prov["providers"][0]["options"]["path"] == mon.GRAFANA_DASHBOARDS_DIR
    env = mon.grafana_env(from_data({}), "10.0.0.9", "s3cret-pass")
    assert "GF_SECURITY_ADMIN_PASSWORD=s3cret-pass\n" in env and "GF_SERVER_HTTP_PORT=3000\n" in env


def test_fleet_dashboard_loads_as_grafana_expects_and_shows_what_the_issue_asks():
    d = json.loads(mon.dashboard_json(mon.fleet_dashboard()))
    assert mon.dashboard_problems(d) == []
    titles = " | ".join(p["title"] for p in d["panels"])
    for want in ("up", "running", "waiting", "KV-cache", "first token", "output token", "tokens/s",
                 "GPU utilisation", "GPU memory", "GPU temperature", "Watchdog restarts"):
        assert want.lower() in titles.lower(), want
    exprs = " ".join(mon.dashboard_exprs(d))
    for metric in (mon.RUNNING, mon.WAITING, mon.KV_USAGE, mon.TTFT, mon.TPOT, mon.GENERATION_TOKENS,
                   mon.GPU_UTIL, mon.GPU_FB_USED, mon.GPU_TEMP, mon.WATCHDOG_RESTARTS):
        assert metric in exprs, metric
    assert all(t["datasource"]["uid"] == mon.DATASOURCE_UID for p in d["panels"] for t in p["targets"])
    # panels do not overlap
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine


def test_dashboard_problems_finds_what_grafana_would_reject():
    assert mon.dashboard_problems([]) == ["not a JSON object"]
    bad = {"title": "x", "panels": [{"type": "timeseries", "id": 1, "gridPos": {"h": 8, "w": 12, "x": 0},
                                     "targets": [{"expr": "up"}]},
                                    {"type": "stat", "id": 1, "gridPos": {"h": 1, "w": 1, "x": 0, "y": 0}}]}
    problems = mon.dashboard_problems(bad)
    assert any("gridPos" in p for p in problems)
    assert any("refId" in p for p in problems)
    assert any("duplicate id" in p for p in problems)


def test_vllm_dashboard_input_bound_to_our_datasource():
    raw = {"__inputs": [{"name": "DS_PROMETHEUS"}], "id": 7, "title": "vLLM", "panels": [
        {"type": "timeseries", "id": 1, "gridPos": {"h": 1, "w": 1, "x": 0, "y": 0},
         "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, "targets": []}]}
    d = mon.provisioned_vllm_dashboard(raw)
    assert "__inputs" not in d and d["id"] is None
    assert d["panels"][0]["datasource"]["uid"] == mon.DATASOURCE_UID


@pytest.mark.parametrize("groups, gpu", [((), True), (("monitoring",), False), (("gateways", "monitoring"), False),
                                         (("monitoring", "gpu_hosts"), True), (("gateways",), False)])
def test_a_host_only_in_monitoring_gets_no_gpu_stack(groups, gpu):
    assert gw.is_gpu_host(groups) is gpu


def test_fleet_checks_with_a_monitoring_host():
    from gpu_llm.deploys.monitoring import fleet_problems

    s = from_data({})
    keyed = gw.FleetHost("gpu1", "10.0.0.5", (), s, "k" * 8)
    unkeyed = gw.FleetHost("gpu2", "10.0.0.6", (), s, None)
    mon_host = gw.FleetHost("mon", "10.0.0.9", ("monitoring",), from_data({"monitoring_grafana_admin_password": "p" * 8}),
                            None)
    assert fleet_problems([keyed, unkeyed]) == []  # no monitoring group: nothing asked
    problems = fleet_problems([keyed, unkeyed, mon_host])
    assert [k for k, _ in problems] == ["vllm_api_key"] and "gpu2" in problems[0][1] and "gpu1" not in problems[0][1]
    nopass = gw.FleetHost("mon", "10.0.0.9", ("monitoring",), s, None)
    assert [k for k, _ in fleet_problems([keyed, nopass])] == ["monitoring_grafana_admin_password"]
    # a single GPU host monitoring itself needs no key
    solo = gw.FleetHost("solo", "10.0.0.5", ("monitoring", "gpu_hosts"),
                        from_data({"monitoring_grafana": False}), None)
    assert fleet_problems([solo]) == []


def test_vendored_vllm_dashboard_loads_and_queries_metrics_vllm_exports():
    """vLLM's own dashboard (gpu_llm/dashboards/vllm.json, SOURCE there): loads as Grafana expects once its data
    source is bound, and every vllm:* metric it queries is exported by vLLM 0.26.0 (recorded /metrics)."""
    import re
    from pathlib import Path

    from gpu_llm import dashboards

    files = dashboards.dashboards()
    assert set(files) == {"gpu-llm-fleet.json", "vllm.json"}
    assert dashboards.names() == sorted(files)  # the probe's paths come from names(), without building the JSON
    d = json.loads(files["vllm.json"])
    assert d["title"] == "vLLM" and mon.dashboard_problems(d) == []
    assert "${DS_PROMETHEUS}" not in files["vllm.json"].decode()
    exported = set(re.findall(r"^(vllm:[a-z_]+)", (Path(__file__).parents[1] / "fixtures/vllm_hang/metrics_load.txt")
                              .read_text(), re.M))
    used = {m for e in mon.dashboard_exprs(d) for m in re.findall(r"vllm:[a-z_]+", e)}
    assert len(used) >= 10 and used <= exported, used - exported
