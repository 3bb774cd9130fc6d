"""Example inventory. Hosts come from GPU_LLM_HOSTS (comma-separated, user@host or host) when set.

    GPU_LLM_HOSTS=root@10.0.0.5,root@10.0.0.6 pyinfra inventory.py deploy.py
"""

import os

_hosts = [h.strip() for h in os.environ.get("GPU_LLM_HOSTS", "").split(",") if h.strip()]


def _host(spec: str, **data):
    user, _, name = spec.rpartition("@")
    return (name, {"ssh_user": user or "root", **data})


if _hosts:
    gpu_hosts = [_host(h) for h in _hosts]
else:
    # Per-host data overrides group_data/: e.g. a 4x RTX 2080 Ti 22 GB box running two 2-GPU instances,
    # and an H100 box with an API key read from a file on the deploying machine.
    gpu_hosts = [
        ("gpu-2080ti.example.internal", {
            "ssh_user": "root",
            "vllm_instances": [
                {"name": "coder-a", "port": 8000, "gpus": [0, 1]},
                {"name": "coder-b", "port": 8001, "gpus": [2, 3]},
            ],
        }),
        ("gpu-h100.example.internal", {
            "ssh_user": "ubuntu",
            "_sudo": True,
            "vllm_api_key_file": "~/.config/gpu-llm/api-key",
            "vllm_max_model_len": 40960,
        }),
    ]

# One URL for the fleet: hosts in group `gateways` run vllm-router in front of every vLLM instance above (the GPU
# hosts then need an API key; see README "Gateway"). Uncomment and set the gateway's address:
# gateways = [("gateway.example.internal", {"ssh_user": "root", "gateway_port": 8080})]
