"""The gateway's role and configuration, pure: which hosts are gateways, which backends they front, the router's
command line, and the inventory-wide checks made before any host is touched.

The gateway is vllm-router (PyPI `vllm-router`, github.com/vllm-project/router): health-checked round-robin /
power-of-two / cache-aware routing with retries and a circuit breaker. We write no router of our own.
Facts it relies on, checked against the stand-in on the testbed (tests/e2e/test_gateway.py):
  - it passes the client's Authorization header on to the worker, so a client without the vLLM key gets vLLM's own
    401 (and `gateway_api_key` can only be the vLLM key);
  - its health check is a GET of `/health`, which vLLM answers without the key (vllm-project/vllm#18893 lists
    /health among the routes outside --api-key), so router#159 (health checks without the key) does not bite;
  - at start it serves as soon as one worker answers /health; with none answering it exits after
    --worker-startup-timeout-secs (seen with 0.1.17; systemd's Restart= starts it again);
  - it has no TLS and no client key of its own (0.1.17 serves plain HTTP only), so with gateway_tls_cert/key set,
    HAProxy (Ubuntu's `haproxy` package, a maintained TLS terminator) listens on gateway_port and hands the
    decrypted bytes to vllm-router on 127.0.0.1:gateway_router_port. It runs in TCP mode: HTTP, streaming included,
    passes through unbuffered and untouched, and routing, health checks and retries stay vllm-router's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GATEWAYS = "gateways"  # inventory group whose hosts run the gateway (interface: keep the name)
GPU_HOSTS = "gpu_hosts"  # a host in both groups also gets the GPU stack


def is_gateway(groups: Iterable[str]) -> bool:
    return GATEWAYS in set(groups)


SERVICE_GROUPS = (GATEWAYS, "monitoring")  # hosts of these groups run a fleet service, not the GPU stack


def is_gpu_host(groups: Iterable[str]) -> bool:
    """Every host is a GPU host except one in `gateways` or `monitoring` (not also in `gpu_hosts`)."""
    groups = set(groups)
    return not groups & set(SERVICE_GROUPS) or GPU_HOSTS in groups


def instance_ports(s: Any) -> list[int]:
    """The host ports of a GPU host's vLLM instances, from its settings alone (vllm_instances, else vllm_port):
    the gateway is configured before, and without, reading the GPU hosts."""
    return [int(i["port"]) for i in s.vllm_instances] if s.vllm_instances else [int(s.vllm_port)]


@dataclass(frozen=True)
class FleetHost:
    name: str  # inventory name
    address: str  # where the gateway reaches it (ssh_hostname, else the inventory name)
    groups: tuple[str, ...]
    settings: Any  # gpu_llm.settings.Settings
    api_key: str | None  # its vLLM API key (vllm_api_key or the file's content)


def backend_urls(fleet: list[FleetHost], extra: list[str]) -> list[str]:
    """Every vLLM instance of every GPU host of the inventory, then `gateway_extra_backends`; sorted, distinct."""
    urls = {f"http://{h.address}:{port}" for h in fleet if is_gpu_host(h.groups) for port in instance_ports(h.settings)}
    return sorted(urls) + [u.rstrip("/") for u in extra if u.rstrip("/") not in urls]


def fleet_problems(fleet: list[FleetHost]) -> list[tuple[str, str]]:
    """Inventory-wide checks: with a gateway, every GPU host needs an API key (its port is then published beyond
    127.0.0.1, so the gateway can reach it), the same key everywhere (the router passes the client's key on), and a
    gateway_api_key, if set, equal to it."""
    gateways = [h for h in fleet if is_gateway(h.groups)]
    if not gateways:
        return []
    problems: list[tuple[str, str]] = []
    gpu = [h for h in fleet if is_gpu_host(h.groups)]
    unkeyed = [h.name for h in gpu if not h.api_key]
    if unkeyed:
        problems.append(("vllm_api_key", f"the inventory has gateways ({', '.join(h.name for h in gateways)}), so "
                         "every GPU host needs vllm_api_key or vllm_api_key_file (without a key its port is bound to "
                         f"127.0.0.1 and the gateway cannot reach it); no key on: {', '.join(unkeyed)}"))
    keys = {h.api_key for h in gpu if h.api_key}
    if len(keys) > 1:
        problems.append(("vllm_api_key", "the GPU hosts behind a gateway must share one vllm_api_key (the gateway "
                         "passes the client's key on to whichever host serves the request)"))
    for g in gateways:
        own = g.settings.gateway_api_key
        if own and keys and own not in keys:
            problems.append(("gateway_api_key", f"gateway_api_key on {g.name} differs from the GPU hosts' vLLM API "
                             "key: vllm-router passes the client's key on to vLLM, so it must be the same key "
                             "(or null to use it)"))
        if not (own or keys or g.api_key):
            problems.append(("gateway_api_key", f"gateway {g.name}: no API key (set vllm_api_key or "
                             "vllm_api_key_file for the fleet)"))
    return problems


def tls(s: Any) -> bool:
    """HTTPS on gateway_port (gateway_tls_cert and gateway_tls_key set; settings refuse one without the other)."""
    return bool(s.gateway_tls_cert and s.gateway_tls_key)


def router_listen(s: Any) -> tuple[str, int]:
    """Where vllm-router listens: gateway_bind:gateway_port, or 127.0.0.1:gateway_router_port behind HTTPS."""
    return ("127.0.0.1", s.gateway_router_port) if tls(s) else (s.gateway_bind, s.gateway_port)


def local_address(bind: str) -> str:
    """Where a host reaches a service of its own listening on `bind`: that address, or loopback for a wildcard."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind, bind)


def check_address(s: Any) -> str:
    """Where the gateway host reaches its own gateway."""
    return local_address(s.gateway_bind)


def router_args(urls: list[str], s: Any) -> list[str]:
    """vllm-router's command line (no secret on it: the client's key is passed on)."""
    bind, port = router_listen(s)
    return [
        "--host", bind, "--port", str(port),
        "--worker-urls", *urls,
        "--policy", s.gateway_policy,
        "--health-check-interval-secs", str(s.gateway_health_interval),
        "--health-failure-threshold", "1",
        "--health-success-threshold", "1",
        "--health-check-timeout-secs", "5",
        "--health-check-endpoint", "/health",
        # the router waits at start for every worker to answer /health; a GPU host down then must not keep
        # the gateway down for long (systemd starts it again)
        "--worker-startup-timeout-secs", "60",
        "--request-timeout-secs", "3600",  # long generations stream for minutes
        "--log-level", "info",
        # its Prometheus metrics, for the monitoring host (vllm-router 0.1.17 defaults: 127.0.0.1:29000)
        "--prometheus-host", s.gateway_metrics_bind, "--prometheus-port", str(s.gateway_metrics_port),
    ]


def unit_text(venv: str, args: list[str]) -> bytes:
    import shlex

    return (
        "# gpu-llm: managed by pyinfra (gpu_llm/deploys/gateway.py); edits are overwritten\n"
        "[Unit]\n"
        "Description=gpu-llm gateway (vllm-router) in front of every vLLM instance of the inventory\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n\n"
        "[Service]\n"
        f"ExecStart={venv}/bin/vllm-router {' '.join(shlex.quote(a) for a in args)}\n"
        "Restart=always\n"
        "RestartSec=3\n"
        "DynamicUser=yes\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    ).encode()


def haproxy_config(s: Any, pem_path: str) -> bytes:
    """HAProxy terminating TLS on gateway_bind:gateway_port in front of vllm-router (TCP mode: bytes pass through,
    so streamed tokens are not buffered). Directives: https://docs.haproxy.org/2.8/configuration.html (bind ... ssl
    crt, ssl-min-ver, mode tcp, timeout client/server)."""
    bind, port = router_listen(s)
    return (
        "# gpu-llm: managed by pyinfra (gpu_llm/deploys/gateway.py); edits are overwritten\n"
        "global\n"
        "    user haproxy\n"
        "    group haproxy\n"
        "    ssl-default-bind-options ssl-min-ver TLSv1.2\n\n"
        "defaults\n"
        "    mode tcp\n"
        "    timeout connect 5s\n"
        "    timeout client 3600s\n"  # long generations stream for minutes (the router's --request-timeout-secs)
        "    timeout server 3600s\n\n"
        "frontend gpu-llm-gateway-https\n"
        f"    bind {s.gateway_bind}:{s.gateway_port} ssl crt {pem_path}\n"
        "    default_backend gpu-llm-gateway-router\n\n"
        "backend gpu-llm-gateway-router\n"
        f"    server vllm-router {bind}:{port}\n"
    ).encode()


def tls_unit_text(config_path: str) -> bytes:
    """HAProxy's master-worker mode under systemd (-Ws, Type=notify), as Ubuntu's haproxy.service runs it, but on
    our own configuration file: a haproxy.service the host already uses is left alone."""
    return (
        "# gpu-llm: managed by pyinfra (gpu_llm/deploys/gateway.py); edits are overwritten\n"
        "[Unit]\n"
        "Description=gpu-llm gateway HTTPS (HAProxy terminating TLS in front of vllm-router)\n"
        "After=network-online.target gpu-llm-gateway.service\n"
        "Wants=network-online.target\n\n"
        "[Service]\n"
        f"ExecStartPre=/usr/sbin/haproxy -q -c -f {config_path}\n"
        f"ExecStart=/usr/sbin/haproxy -Ws -f {config_path} -p /run/gpu-llm-gateway-tls.pid\n"
        "ExecReload=/bin/kill -USR2 $MAINPID\n"
        "Type=notify\n"
        "Restart=always\n"
        "RestartSec=3\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    ).encode()
