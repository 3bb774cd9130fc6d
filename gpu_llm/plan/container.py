"""The full docker spec of a vLLM instance, its hash, and the `docker run` line it becomes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gpu_llm.plan import InstancePlan
from gpu_llm.plan.config import LOOPBACK

SPEC_LABEL = "gpu-llm.spec-hash"
MANAGED_LABEL = "gpu-llm.managed"


def container_spec(plan: InstancePlan, template_sha256: str, *, api_key_sha256: str | None = None) -> dict[str, Any]:
    """Everything that defines the container; any change in it must recreate the container.

    The API key itself never enters the spec: only a digest of it (so a new key recreates the container)
    and the path of the 0600 env file that carries it. Without a digest (also `gpu-llm plan`, which never reads
    the key) the port is published on loopback only and no env file is passed.
    """
    has_key = api_key_sha256 is not None
    if has_key and plan.env_file is None:
        raise ValueError(f"{plan.container_name}: an API key digest for a plan made without a key "
                         "(ServeConfig.keyed is False)")
    return {
        "name": plan.container_name,
        "image": plan.image,
        "args": list(plan.vllm_args),
        "env": dict(sorted(plan.env.items())),
        "env_file": plan.env_file if has_key else None,
        "api_key_sha256": api_key_sha256,
        "mounts": [plan.model_mount.volume, plan.template_mount.volume],
        "template_sha256": template_sha256,
        "ports": [f"{plan.bind if has_key else LOOPBACK}:{plan.port}:{plan.container_port}"],
        "runtime": "nvidia",
        "gpus": plan.gpus_request,
        "ipc": "host",
        "ulimits": dict(sorted(plan.ulimits.items())),
        "restart": plan.restart_policy,
        "cpuset_cpus": plan.cpuset_cpus,
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
