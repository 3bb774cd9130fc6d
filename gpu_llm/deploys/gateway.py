"""Roles (which hosts get the GPU stack, which the gateway), the inventory-wide checks, and the gateway itself:
vllm-router in its own venv as gpu-llm-gateway.service, fronting every vLLM instance of the inventory."""

from __future__ import annotations

from pyinfra.api import HiddenValue, deploy
from pyinfra.context import ctx_host, ctx_inventory

from gpu_llm import gateway as gw
from gpu_llm.deploys import host_settings
from gpu_llm.layout import (GATEWAY_TLS_PACKAGE, GATEWAY_TLS_UNIT, GATEWAY_TLS_UNIT_FILE, GATEWAY_UNIT,
                            GATEWAY_UNIT_FILE, gateway_auth_path, gateway_tls_config_path, gateway_tls_pem_path)
from gpu_llm.operations import files as gpu_files
from gpu_llm.operations import gateway as gateway_ops
from gpu_llm.operations import model as model_ops
from gpu_llm.operations import packages
from gpu_llm.settings import SettingsError, api_key, for_host, gateway_tls_pem


def _groups(h) -> tuple[str, ...]:  # noqa: ANN001
    return tuple(getattr(h, "groups", None) or ())


def _real_host():  # noqa: ANN202
    return ctx_host.get()


def gpu_host() -> bool:
    """This host gets the GPU stack (every host but one only in group `gateways`)."""
    return gw.is_gpu_host(_groups(_real_host()))


def gateway_host() -> bool:
    """This host runs the gateway (it is in group `gateways`)."""
    return gw.is_gateway(_groups(_real_host()))


_FLEET = "_gpu_llm_fleet"


def fleet() -> list[gw.FleetHost]:
    """Every inventory host with its settings and key (each host's settings validated), kept for the run."""
    inv = ctx_inventory.get()
    cached = vars(inv).get(_FLEET)
    if cached is None:
        cached = [gw.FleetHost(h.name, str(h.data.get("ssh_hostname") or h.name), _groups(h), for_host(h),
                               api_key(for_host(h))) for h in inv]
        vars(inv)[_FLEET] = cached
    return cached


def fleet_checks() -> None:
    """With gateways in the inventory: every GPU host keyed, one key, the gateway's key the same. Raised while
    pyinfra prepares the run, so nothing has changed on any host."""
    if not ctx_inventory.get().get_group(gw.GATEWAYS, None):
        return
    hosts = fleet()
    problems = gw.fleet_problems(hosts)
    if problems:
        raise SettingsError(problems)
    for h in hosts:  # the certificate and key must load as a pair on the deploying machine
        if gw.is_gateway(h.groups):
            gateway_tls_pem(h.settings)


@deploy("Wait for the GPU hosts")
def fleet_ready() -> None:
    """Called on every host at the same place in deploy.py: pyinfra orders each host's operations on their own
    (a topological sort over every host's sequence, pyinfra/api/state.py get_op_order), so without an operation
    the GPU hosts and the gateway share, the gateway's would run while the GPU hosts are still being installed."""
    gateway_ops.barrier(name="Wait until every GPU host is deployed and verified")


@deploy("Run the gateway")
def gateway() -> None:
    s = host_settings()
    hosts = fleet()
    urls = gw.backend_urls(hosts, s.gateway_extra_backends)
    key = s.gateway_api_key or next((h.api_key for h in hosts if gw.is_gpu_host(h.groups) and h.api_key), None) \
        or api_key(s)
    packages.packages(name="Install python3-venv for the gateway venv", packages=["python3-venv"])
    venv = gateway_ops.venv(name="Install vllm-router into the gateway venv", path=s.gateway_venv,
                            requirement=s.gateway_router_requirement, pip_args=s.hf_pip_args)
    gpu_files.directory(name="Create the gpu-llm config directory", path=s.vllm_config_dir, mode="755")
    model_ops.secret_file(name="Store the gateway's check key (0600)", path=gateway_auth_path(s),
                          content=HiddenValue(f"Authorization: Bearer {key}\n") if key else None)
    pem = gateway_tls_pem(s)
    if pem is None:
        gateway_ops.tls_front(name="Remove the gateway's HTTPS front (plain HTTP)", unit=GATEWAY_TLS_UNIT,
                              unit_file=GATEWAY_TLS_UNIT_FILE, unit_content=b"",
                              config_path=gateway_tls_config_path(s), config=None)
        model_ops.secret_file(name="Remove the gateway's TLS key", path=gateway_tls_pem_path(s), content=None)
    router_bind, router_port = gw.router_listen(s)
    gateway_ops.router(name=f"Run vllm-router on {router_bind}:{router_port} in front of {len(urls)} backend(s)",
                       unit=GATEWAY_UNIT, unit_file=GATEWAY_UNIT_FILE,
                       content=gw.unit_text(s.gateway_venv, gw.router_args(urls, s)),
                       venv_changed=venv.did_change)
    if pem is not None:
        packages.packages(name="Install HAProxy for the gateway's HTTPS", packages=[GATEWAY_TLS_PACKAGE],
                          update=True)
        cert = model_ops.secret_file(name="Store the gateway's certificate and key (0600)",
                                     path=gateway_tls_pem_path(s), content=HiddenValue(pem))
        gateway_ops.tls_front(name=f"Serve HTTPS on port {s.gateway_port} (HAProxy in front of vllm-router)",
                              unit=GATEWAY_TLS_UNIT, unit_file=GATEWAY_TLS_UNIT_FILE,
                              unit_content=gw.tls_unit_text(gateway_tls_config_path(s)),
                              config_path=gateway_tls_config_path(s),
                              config=gw.haproxy_config(s, gateway_tls_pem_path(s)), restart_when=cert.did_change)
    gateway_ops.verified(name="Verify the gateway end to end", port=s.gateway_port,
                         header_file=gateway_auth_path(s), model=s.vllm_served_model_name, backends=len(urls),
                         timeout_s=s.vllm_health_timeout, tls_pem=gateway_tls_pem_path(s) if pem else None,
                         address=gw.check_address(s))
