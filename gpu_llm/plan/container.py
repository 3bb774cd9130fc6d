"""The full docker spec of a vLLM instance, its hash, and the `docker run` line it becomes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gpu_llm.plan import CONTAINER_MODEL_ROOT, CONTAINER_PORT, CONTAINER_TEMPLATE_DIR, InstancePlan

SPEC_LABEL = "gpu-llm.spec-hash"
MANAGED_LABEL = "gpu-llm.managed"


def container_spec(plan: InstancePlan, settings: Any, template_sha256: str, *,
                   api_key_sha256: str | None = None, env_file: str | None = None) -> dict[str, Any]:
    """Everything that defines the container; any change in it must recreate the container.

    The API key itself never enters the spec: only a digest of it (so a new key recreates the container)
    and the path of the 0600 env file that carries it.
    """
    model_name = settings.model_dir.rsplit("/", 1)[-1]
    template_host = f"{settings.vllm_config_dir}/{settings.vllm_chat_template}"
    has_key = api_key_sha256 is not None
    # Without an API key the port is published on loopback only (anyone reaching the host could use it).
    bind = settings.vllm_bind if has_key else "127.0.0.1"
    # docker's --gpus value is CSV: a device list needs literal quotes around it ('"device=0,1"').
    gpus = "all" if settings.vllm_instances is None else '"device=' + ",".join(map(str, plan.gpu_indices)) + '"'
    return {
        "name": plan.container_name,
        "image": plan.image,
        "args": list(plan.vllm_args),
        "env": dict(sorted(plan.env.items())),
        "env_file": env_file if has_key else None,
        "api_key_sha256": api_key_sha256,
        "mounts": [
            f"{settings.model_dir}:{CONTAINER_MODEL_ROOT}/{model_name}:ro",
            f"{template_host}:{CONTAINER_TEMPLATE_DIR}/{settings.vllm_chat_template}:ro",
        ],
        "template_sha256": template_sha256,
        "ports": [f"{bind}:{plan.port}:{CONTAINER_PORT}"],
        "runtime": "nvidia",
        "gpus": gpus,
        "ipc": "host",
        "ulimits": dict(sorted(settings.vllm_ulimits.items())),
        "restart": settings.vllm_restart_policy,
        "cpuset_cpus": settings.vllm_cpuset_cpus,
    }


def spec_hash(spec: dict[str, Any]) -> str:
    """Stable digest of a spec (key order and whitespace don't matter)."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def docker_run_args(spec: dict[str, Any]) -> list[str]:
    """`docker run -d ...` arguments (without the leading `docker`) for a spec, labelled with its hash."""
    args = ["run", "-d", "--name", spec["name"],
            "--label", f"{MANAGED_LABEL}=true", "--label", f"{SPEC_LABEL}={spec_hash(spec)}",
            "--runtime", spec["runtime"], "--gpus", spec["gpus"], "--ipc", spec["ipc"],
            "--restart", spec["restart"]]
    for limit, value in spec["ulimits"].items():
        args += ["--ulimit", f"{limit}={value}"]
    if spec["cpuset_cpus"]:
        args += ["--cpuset-cpus", spec["cpuset_cpus"]]
    for mount in spec["mounts"]:
        args += ["-v", mount]
    for port in spec["ports"]:
        args += ["-p", port]
    for key, value in spec["env"].items():
        args += ["-e", f"{key}={value}"]
    if spec["env_file"]:
        args += ["--env-file", spec["env_file"]]
    return args + [spec["image"]] + spec["args"]
