"""gpu-llm: bare Ubuntu GPU server -> tuned, verified vLLM endpoint serving Qwen3-32B-AWQ.

    pyinfra inventory.py deploy.py

Table of contents only; each step is one @deploy in gpu_llm/deploys/. The model download starts in the
background right after preflight (it is the longest step) and is joined before the container starts.
Hosts in inventory group `gateways` run the gateway instead of the GPU stack (both when also in `gpu_hosts`);
hosts in group `monitoring` run Prometheus and Grafana for the whole inventory.
"""

from gpu_llm.deploys.docker import docker
from gpu_llm.deploys.gateway import fleet_checks, fleet_ready, gateway, gateway_host, gpu_host
from gpu_llm.deploys.image import image_pull_start, image_pull_wait
from gpu_llm.deploys.model import model_download_start, model_download_wait
from gpu_llm.deploys.monitoring import exporters, monitoring, monitoring_host
from gpu_llm.deploys.nvidia import nvidia
from gpu_llm.deploys.preflight import preflight, service_preflight
from gpu_llm.deploys.vllm import vllm, vllm_verify
from gpu_llm.deploys.watchdog import watchdog

fleet_checks()               # with gateways: every GPU host keyed, one key; refused before any change
service_preflight()          # hosts without the GPU stack (gateway only): OS, arch, root, disk; before any change
if gpu_host():
    preflight()              # OS, arch, root, disk, GPUs on the PCI bus, settings: refuses before any change
    model_download_start()   # huggingface-hub in its own venv, download runs as a transient systemd unit
    nvidia()                 # NVIDIA driver (pinned, held, reboot if needed), persistence, NVSwitch fabric, CUDA
    docker()                 # Docker + NVIDIA Container Toolkit, daemon.json merged
    image_pull_start()       # docker pull of the planned vLLM image as a transient systemd unit, beside the download
    model_download_wait()    # join the download, verify sizes/hashes, manifest
    image_pull_wait()        # join the image pull (re-started if a reboot stopped it)
    vllm()                   # chat template, env files, tuned vLLM container(s) labelled with their spec hash
    vllm_verify()            # /health wait, one chat completion without <think>
    watchdog()               # systemd service restarting a container whose engine hangs while /health says 200
fleet_ready()                # every host: the gateway's steps run after every GPU host's
if gateway_host():
    gateway()                # vllm-router in front of every vLLM instance of the inventory, checked end to end
exporters()                  # with a `monitoring` group: node + DCGM exporters on every GPU host (checks first)
if monitoring_host():
    monitoring()             # Prometheus (targets from the inventory, alert rules) + Grafana (fleet + vLLM dashboards)
