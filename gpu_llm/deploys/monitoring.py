"""Monitoring (issue 14): on every GPU host of an inventory with a `monitoring` group, Ubuntu's node exporter and
NVIDIA's DCGM exporter; on hosts in group `monitoring`, Prometheus (Ubuntu's package) scraping every vLLM instance,
node exporter, DCGM exporter and gateway of the inventory, with gpu-llm's alert rules, and Grafana (Grafana's apt
repository) provisioned with the fleet overview and vLLM's dashboards."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.context import ctx_host, ctx_inventory

from gpu_llm import dashboards
from gpu_llm import gateway as gw
from gpu_llm import monitoring as mon
from gpu_llm.deploys import host_settings
from gpu_llm.deploys.gateway import fleet
from gpu_llm.layout import (
    DCGM_CONTAINER,
    GRAFANA_DATASOURCE,
    GRAFANA_DROPIN,
    GRAFANA_KEY,
    GRAFANA_PROVIDER,
    GRAFANA_SERVICE,
    GRAFANA_SOURCE,
    KEYRINGS,
    NODE_EXPORTER_DEFAULTS,
    NODE_EXPORTER_SERVICE,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DEFAULTS,
    PROMETHEUS_SERVICE,
    grafana_env_path,
)
from gpu_llm.operations import files as gpu_files
from gpu_llm.operations import monitoring as ops
from gpu_llm.operations import packages
from gpu_llm.settings import SettingsError


def _groups(h) -> tuple[str, ...]:  # noqa: ANN001
    return tuple(getattr(h, "groups", None) or ())


def monitoring_host() -> bool:
    """This host runs Prometheus and Grafana (it is in group `monitoring`)."""
    return mon.is_monitoring(_groups(ctx_host.get()))


def _monitored() -> bool:
    return bool(ctx_inventory.get().get_group(mon.MONITORING, None))


def _self() -> gw.FleetHost:
    name = ctx_host.get().name
    return next(h for h in fleet() if h.name == name)


def fleet_problems(hosts: list[gw.FleetHost]) -> list[tuple[str, str]]:
    """With a monitoring host, every GPU host's vLLM port must be reachable from it: published beyond 127.0.0.1,
    which needs an API key (gpu_llm/plan: without one the port is bound to loopback). A GPU host that is itself the
    only monitoring host scrapes itself and needs none."""
    monitors = [h for h in hosts if mon.is_monitoring(h.groups)]
    if not monitors:
        return []
    problems: list[tuple[str, str]] = []
    unreachable = [h.name for h in hosts if gw.is_gpu_host(h.groups) and not h.api_key
                   and not (len(monitors) == 1 and monitors[0].name == h.name)]
    if unreachable:
        problems.append(("vllm_api_key", f"the inventory has monitoring hosts ({', '.join(h.name for h in monitors)}), "
                         "so every GPU host needs vllm_api_key or vllm_api_key_file (without a key its port is bound "
                         f"to 127.0.0.1 and Prometheus cannot scrape /metrics); no key on: {', '.join(unreachable)}"))
    for m in monitors:
        if m.settings.monitoring_grafana and not m.settings.monitoring_grafana_admin_password:
            problems.append(("monitoring_grafana_admin_password", f"monitoring host {m.name}: set "
                             "monitoring_grafana_admin_password (at least 8 characters; stored 0600, never printed) "
                             "or monitoring_grafana: false"))
    return problems


@deploy("Run the metrics exporters")
def exporters() -> None:
    """On GPU hosts of an inventory with a `monitoring` group: node exporter (the watchdog's restart counter in its
    textfile directory) and DCGM exporter, listening where the monitoring host reaches them. Inventory-wide checks
    first (raised while pyinfra prepares the run: nothing has changed on any host)."""
    if not _monitored():
        return
    problems = fleet_problems(fleet())
    if problems:
        raise SettingsError(problems)
    if not gw.is_gpu_host(_groups(ctx_host.get())):
        return
    s = host_settings()
    me = _self()
    bind = mon.resolve_bind(s.monitoring_exporter_bind, me.address, "0.0.0.0")
    packages.packages(name="Install Ubuntu's Prometheus node exporter", packages=["prometheus-node-exporter"],
                      update=True)
    ops.configured_service(
        name=f"Run the node exporter on {bind}:{s.monitoring_node_exporter_port}", unit=NODE_EXPORTER_SERVICE,
        files={NODE_EXPORTER_DEFAULTS: (mon.node_exporter_args(bind, s.monitoring_node_exporter_port).encode(),
                                        "644")},
        backup=(NODE_EXPORTER_DEFAULTS,),
        ready_url=f"http://{_local(bind)}:{s.monitoring_node_exporter_port}/metrics")
    if s.monitoring_gpu_exporter:
        ops.exporter_container(
            name=f"Run NVIDIA's DCGM exporter on {bind}:{s.monitoring_gpu_exporter_port}",
            spec=ops.exporter_spec(DCGM_CONTAINER, s.monitoring_gpu_exporter_image, bind,
                                   s.monitoring_gpu_exporter_port, s.vllm_ulimits.get("memlock")))
    else:
        ops.container_absent(name="Remove the DCGM exporter (monitoring_gpu_exporter: false)",
                             container=DCGM_CONTAINER)


def _local(bind: str) -> str:
    """`bind` as the host part of a URL on the host itself (gateway.local_address; IPv6 in brackets)."""
    address = gw.local_address(bind)
    return f"[{address}]" if ":" in address else address


@deploy("Run Prometheus and Grafana")
def monitoring() -> None:
    s = host_settings()
    me = _self()
    hosts = fleet()
    bind = mon.resolve_bind(s.monitoring_bind, me.address, "127.0.0.1")
    prom = f"{_local(bind)}:{s.monitoring_prometheus_port}"
    targets = mon.targets(hosts, s)
    packages.packages(name="Install Ubuntu's Prometheus", packages=["prometheus"], update=True)
    ops.configured_service(
        name=f"Run Prometheus on {bind}:{s.monitoring_prometheus_port} scraping {len(targets)} targets",
        unit=PROMETHEUS_SERVICE,
        files={PROMETHEUS_CONFIG: (mon.prometheus_config(targets, s, prom).encode(), "644"),
               mon.RULES_FILE: (mon.alert_rules(s).encode(), "644"),
               PROMETHEUS_DEFAULTS: (mon.prometheus_args(s, bind).encode(), "644")},
        check=["promtool", "check", "config", PROMETHEUS_CONFIG],
        backup=(PROMETHEUS_CONFIG, PROMETHEUS_DEFAULTS),
        ready_url=f"http://{prom}/-/ready")
    if not s.monitoring_grafana:
        return
    base = s.monitoring_grafana_repo_url
    gpu_files.directory(name="Create /etc/apt/keyrings", path=KEYRINGS, mode="755")
    gpu_files.download(name="Download Grafana's repository key", src=f"{base}/gpg.key", dest=GRAFANA_KEY, mode="644",
                       setting="monitoring_grafana_repo_url")
    # https://grafana.com/docs/grafana/latest/setup-grafana/installation/debian/ (the stable channel)
    packages.repo(name="Add Grafana's apt repository", src=f"deb [signed-by={GRAFANA_KEY}] {base} stable main",
                  filename=GRAFANA_SOURCE)
    packages.packages(name="Install Grafana", packages=["grafana"], update=True)
    files = {GRAFANA_DATASOURCE: (mon.grafana_datasource(f"http://{prom}").encode(), "644"),
             GRAFANA_PROVIDER: (mon.grafana_dashboard_provider().encode(), "644"),
             GRAFANA_DROPIN: (f"# gpu-llm: managed by pyinfra\n[Service]\nEnvironmentFile={grafana_env_path(s)}\n"
                              .encode(), "644"),
             grafana_env_path(s): (HiddenBytes(mon.grafana_env(s, bind, s.monitoring_grafana_admin_password or "")),
                                   "600")}  # uploaded as a file: never on a command line or in output
    for name, content in dashboards.dashboards().items():
        files[f"{mon.GRAFANA_DASHBOARDS_DIR}/{name}"] = (content, "644")
    ops.configured_service(
        name=f"Run Grafana on {bind}:{s.monitoring_grafana_port} with {len(dashboards.dashboards())} dashboards",
        unit=GRAFANA_SERVICE, files=files, secret=(grafana_env_path(s),),
        ready_url=f"http://{_local(bind)}:{s.monitoring_grafana_port}/api/health")


class HiddenBytes(bytes):
    """bytes whose repr hides them (pyinfra prints operation arguments at -vv)."""

    def __new__(cls, text: str) -> HiddenBytes:
        return super().__new__(cls, text.encode())

    def __repr__(self) -> str:
        return "HiddenBytes(***)"
