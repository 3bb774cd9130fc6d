"""Where gpu-llm puts things on a host, and the snapshot probe that reads all of them in one command.

Every path, apt source file, package and unit the deploys manage is named here once; `probe(s)` hands the whole list
to the host snapshot (gpu_llm/facts/snapshot.py), so a no-op re-run reads each host with one command.
"""

from __future__ import annotations

from typing import Protocol

from gpu_llm.facts.snapshot import Probe
from gpu_llm.monitoring import RULES_FILE
from gpu_llm.operations.packages import source_file
from gpu_llm.plan.config import env_file_path, template_host_path
from gpu_llm.plan.datacenter import FABRIC_SERVICE, PERSISTENCED_SERVICE

# ---- fixed paths -------------------------------------------------------------------------------------------------
NOUVEAU_CONF = "/etc/modprobe.d/gpu-llm-blacklist-nouveau.conf"
DRIVER_PIN = "/etc/apt/preferences.d/gpu-llm-nvidia-driver"
UNATTENDED_CONF = "/etc/apt/apt.conf.d/51gpu-llm-unattended-upgrades"
# nvidia_driver_source: ubuntu: unattended-upgrades keeps the kernel metapackages too (operations.nvidia.kernel_hold)
UNATTENDED_KERNEL_CONF = "/etc/apt/apt.conf.d/51gpu-llm-unattended-kernel"
STATE_DIR = "/var/lib/gpu-llm"
KEYRINGS = "/etc/apt/keyrings"
DOCKER_KEY = f"{KEYRINGS}/docker.asc"
NVCT_KEY = f"{KEYRINGS}/nvidia-container-toolkit.asc"
UDEV_RULE = "/etc/udev/rules.d/71-nvidia-dev-char.rules"
LOG_DIR = "/var/log/gpu-llm"
DOWNLOAD_UNIT = "gpu-llm-model-download.service"
IMAGE_PULL_UNIT = "gpu-llm-image-pull.service"
IMAGE_PULL_LOG = f"{LOG_DIR}/image-pull.log"
DOCKER_SERVICE = "docker"
# persistence mode on (gpu_llm.operations.nvidia.persistenced; files/nvidia-persistenced-gpu-llm.conf says why)
PERSISTENCED_DROPIN = f"/etc/systemd/system/{PERSISTENCED_SERVICE}.service.d/gpu-llm.conf"
# the hang watchdog (gpu_llm/remote/watchdog.py) on GPU hosts
WATCHDOG_UNIT = "gpu-llm-watchdog.service"
WATCHDOG_UNIT_FILE = f"/etc/systemd/system/{WATCHDOG_UNIT}"
WATCHDOG_LOG = f"{LOG_DIR}/watchdog.log"
WATCHDOG_STATE = f"{STATE_DIR}/watchdog-state.json"
# the gateway (vllm-router) on hosts in group `gateways` (names: gpu_llm/gateway.py)
GATEWAY_UNIT = "gpu-llm-gateway.service"
GATEWAY_UNIT_FILE = f"/etc/systemd/system/{GATEWAY_UNIT}"
GATEWAY_VENV_MARKER = ".gpu-llm-installed"
# monitoring (gpu_llm/monitoring.py): Ubuntu's prometheus + node exporter, Grafana from its repository, DCGM exporter
PROMETHEUS_SERVICE = "prometheus"
PROMETHEUS_DEFAULTS = "/etc/default/prometheus"  # ARGS of Ubuntu's prometheus.service
PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"
NODE_EXPORTER_SERVICE = "prometheus-node-exporter"
NODE_EXPORTER_DEFAULTS = "/etc/default/prometheus-node-exporter"
MONITORING_PACKAGES = ("prometheus", "prometheus-node-exporter", "grafana")
GRAFANA_SERVICE = "grafana-server"
GRAFANA_KEY = f"{KEYRINGS}/grafana.asc"
GRAFANA_SOURCE = "grafana"
GRAFANA_DATASOURCE = "/etc/grafana/provisioning/datasources/gpu-llm.yaml"
GRAFANA_PROVIDER = "/etc/grafana/provisioning/dashboards/gpu-llm.yaml"
GRAFANA_DROPIN = f"/etc/systemd/system/{GRAFANA_SERVICE}.service.d/gpu-llm.conf"
DCGM_CONTAINER = "gpu-llm-dcgm-exporter"
# with HTTPS (gateway_tls_cert/key): HAProxy from Ubuntu's archive terminates TLS in front of vllm-router
GATEWAY_TLS_UNIT = "gpu-llm-gateway-tls.service"
GATEWAY_TLS_UNIT_FILE = f"/etc/systemd/system/{GATEWAY_TLS_UNIT}"
GATEWAY_TLS_PACKAGE = "haproxy"
# apt sources (files under /etc/apt/sources.list.d/, without .list)
DOCKER_SOURCE = "docker"
NVCT_SOURCE = "nvidia-container-toolkit"
# NVIDIA's CUDA repository directory per distro (developer.download.nvidia.com/compute/cuda/repos/<dir>/x86_64/)
CUDA_REPO_DIRS = {"ubuntu-24.04": "ubuntu2404", "ubuntu-22.04": "ubuntu2204", "debian-12": "debian12"}
# Packages the deploys install (the driver's own packages are always read: facts.nvidia.DRIVER_PATTERNS)
DOCKER_CE_PACKAGES = ("docker-ce", "docker-ce-cli", "containerd.io")
NVCT_PACKAGES = ("nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools",
                 "libnvidia-container1")  # pinned together, as NVIDIA's install guide does
OTHER_PACKAGES = ("python3-venv", "docker.io", "cuda-keyring", GATEWAY_TLS_PACKAGE)
# Canonical's signed precompiled NVIDIA modules (nvidia_driver_source: ubuntu): versioned by kernel, not by driver
UBUNTU_MODULES_PATTERN = "linux-modules-nvidia-*"


class _Settings(Protocol):  # the settings layout() needs (gpu_llm.settings.Settings has them all)
    model_dir: str
    hf_venv: str
    vllm_config_dir: str
    vllm_chat_template: str
    vllm_container_name: str
    vllm_instances: list[dict] | None
    nvidia_cuda_keyring_version: str
    cuda_toolkit_version: str
    gateway_venv: str


def keyring_deb(keyring_version: str) -> str:
    """Where the cuda-keyring .deb is kept (downloaded to a *.deb path first: apt.deb(src=URL) is not idempotent)."""
    return f"{STATE_DIR}/cuda-keyring_{keyring_version}_all.deb"


def cuda_source(repo_dir: str) -> str:
    """The .list file name (without .list) of NVIDIA's CUDA repository for `repo_dir`."""
    return f"cuda-{repo_dir}-x86_64"


def cuda_toolkit_package(version: str) -> str:
    return "cuda-toolkit-" + version.replace(".", "-")


def token_path(s: _Settings) -> str:
    return f"{s.vllm_config_dir}/hf-token"


def download_script_path(s: _Settings) -> str:
    return f"{s.hf_venv}/gpu-llm-download.py"


def verify_script_path(s: _Settings) -> str:
    """Where verify.py lands on the host (run by the hf venv's python, which has requests)."""
    return f"{s.hf_venv}/gpu-llm-verify.py"


def watchdog_script_path(s: _Settings) -> str:
    """Where watchdog.py lands on the host (standard library only; run by the hf venv's python)."""
    return f"{s.hf_venv}/gpu-llm-watchdog.py"


def watchdog_config_path(s: _Settings) -> str:
    return f"{s.vllm_config_dir}/watchdog.json"


def gateway_auth_path(s: _Settings) -> str:
    """0600 file on a gateway host with the `Authorization: Bearer <key>` header its end-to-end check sends."""
    return f"{s.vllm_config_dir}/gateway-auth.header"


def gateway_tls_config_path(s: _Settings) -> str:
    return f"{s.vllm_config_dir}/gateway-tls.cfg"


def gateway_tls_pem_path(s: _Settings) -> str:
    """0600 file on a gateway host: the certificate chain then its private key (HAProxy's `crt`)."""
    return f"{s.vllm_config_dir}/gateway-tls.pem"


def grafana_env_path(s: _Settings) -> str:
    """0600 environment file of grafana-server (its admin password)."""
    return f"{s.vllm_config_dir}/grafana.env"


def grafana_dashboard_paths() -> list[str]:
    """The dashboards' files on the monitoring host (fleet + vLLM's: gpu_llm/dashboards/)."""
    from gpu_llm import dashboards

    return dashboards.paths()


def template_path(s: _Settings) -> str:
    """Where the chat template lands on the host (the planner mounts it from there)."""
    return template_host_path(s.vllm_config_dir, s.vllm_chat_template)


def instance_names(s: _Settings) -> list[str]:
    return [i["name"] for i in s.vllm_instances] if s.vllm_instances else [s.vllm_container_name]


def probe(s: _Settings) -> Probe:
    """Everything the deploys read on a host, for the one snapshot command."""
    paths = (
        download_script_path(s), verify_script_path(s), s.vllm_config_dir, LOG_DIR, s.model_dir, token_path(s),
        NOUVEAU_CONF, PERSISTENCED_DROPIN, DRIVER_PIN, UNATTENDED_CONF, UNATTENDED_KERNEL_CONF, STATE_DIR,
        keyring_deb(s.nvidia_cuda_keyring_version),
        KEYRINGS, DOCKER_KEY, NVCT_KEY, UDEV_RULE,
        template_path(s), *(env_file_path(s.vllm_config_dir, n) for n in instance_names(s)),
        watchdog_script_path(s), watchdog_config_path(s), WATCHDOG_UNIT_FILE,
        GATEWAY_UNIT_FILE, gateway_auth_path(s), f"{s.gateway_venv}/{GATEWAY_VENV_MARKER}",
        PROMETHEUS_DEFAULTS, PROMETHEUS_CONFIG, RULES_FILE, NODE_EXPORTER_DEFAULTS, GRAFANA_KEY, GRAFANA_DATASOURCE,
        GRAFANA_PROVIDER, GRAFANA_DROPIN, grafana_env_path(s), *grafana_dashboard_paths(),
        GATEWAY_TLS_UNIT_FILE, gateway_tls_config_path(s), gateway_tls_pem_path(s),
    )
    sources = (DOCKER_SOURCE, NVCT_SOURCE, GRAFANA_SOURCE, *(cuda_source(d) for d in CUDA_REPO_DIRS.values()))
    packages = (*OTHER_PACKAGES, *DOCKER_CE_PACKAGES, *NVCT_PACKAGES, cuda_toolkit_package(s.cuda_toolkit_version),
                UBUNTU_MODULES_PATTERN, *MONITORING_PACKAGES)
    return Probe(model_dir=s.model_dir, download_unit=DOWNLOAD_UNIT, hf_venv=s.hf_venv,
                 paths=tuple(dict.fromkeys(paths)), packages=packages,
                 sources=tuple(source_file(name) for name in sources),
                 services=(DOCKER_SERVICE, IMAGE_PULL_UNIT, WATCHDOG_UNIT, GATEWAY_UNIT, GATEWAY_TLS_UNIT,
                           FABRIC_SERVICE, PERSISTENCED_SERVICE, PROMETHEUS_SERVICE, NODE_EXPORTER_SERVICE,
                           GRAFANA_SERVICE))
