"""Operations for vLLM instances: containers (with their 0600 API-key env files) and their verification.

Both plan at execution time from the host's GPU fact (the driver may only have been installed earlier in the
same run), so the instances match the GPUs the host really has: the planner's layout (data-parallel replicas in
one container, or one container per replica) follows the GPUs the snapshot reports.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from pyinfra import host, state
from pyinfra.api import QuoteString, StringCommand

from gpu_llm.facts import snapshot
from gpu_llm.facts.container import VllmVerdict
from gpu_llm.operations import files as gpu_files
from gpu_llm.operations import operation
from gpu_llm.operations.model import secret_file_commands
from gpu_llm.plan import InstancePlan, PlanError, ServeConfig, env_file_path, plan_instances
from gpu_llm.plan.container import MANAGED_LABEL, SPEC_LABEL, container_spec, docker_run_args, spec_hash


class NotPlannable(Exception):
    """The instances cannot be planned: GPUs not readable (no driver, reboot pending) or a PlanError."""


def fail(message: str) -> StringCommand:
    """A command that fails the operation with `message` (cleaner than a traceback from raising in the op)."""
    return StringCommand("echo", QuoteString(message), ">&2", ";", "exit", "1")


def host_plans(config: ServeConfig) -> list[InstancePlan]:
    """Plan the instances for the GPUs the host reports now; NotPlannable says why not (naming the setting)."""
    inventory = snapshot.current(host).gpus
    if inventory.smi != "ok" or not inventory.gpus:
        raise NotPlannable(f"cannot plan vLLM instances: nvidia-smi state {inventory.smi} {inventory.message}".strip())
    try:
        return plan_instances(inventory.gpus, config)
    except PlanError as exc:
        raise NotPlannable(f"{exc.key}: {exc}") from exc


def _by_name(containers: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    return {c["Name"].lstrip("/"): c for c in containers or []}


def _labels(container: dict[str, Any]) -> dict[str, str]:
    return (container.get("Config") or {}).get("Labels") or {}


def container_decision(existing: dict[str, Any] | None, wanted_hash: str, force: bool) -> str | None:
    """Why a container must be (re)created, or None when it already runs the wanted spec."""
    if existing is None:
        return "missing"
    old = _labels(existing).get(SPEC_LABEL, "none")
    if old != wanted_hash:
        return f"spec {old[:12]} -> {wanted_hash[:12]}"
    if not (existing.get("State") or {}).get("Running"):
        return f"stopped ({(existing.get('State') or {}).get('Status', 'unknown')})"
    if force:
        return "chat template on the host was restored"
    return None


def stale_containers(containers: list[dict[str, Any]] | None, wanted: set[str]) -> list[str]:
    """Names of containers we created (our label) for instances that are no longer configured."""
    return sorted(name for name, c in _by_name(containers).items()
                  if name not in wanted and _labels(c).get(MANAGED_LABEL) == "true")


@operation()
def instances(config: ServeConfig, template_sha256: str, api_key: Any = None,
              template_restored: Callable[[], bool] = lambda: False):
    """Every planned vLLM instance runs its current spec; instances no longer planned are removed.

    + config: the host's plan input (gpu_llm.plan.ServeConfig.from_settings of its settings)
    + template_sha256: sha256 of the chat template's content (part of the spec: editing it recreates)
    + api_key: pyinfra HiddenValue with the API key, or None (then the port is bound to 127.0.0.1)
    + template_restored: called at execution; True recreates containers even with an unchanged spec
    """
    try:
        plans = host_plans(config)
    except NotPlannable as exc:  # while predicting changes this only says "will change"; executing, it fails
        yield fail(str(exc))
        return
    raw_key = api_key.unmask() if api_key is not None else None
    key_digest = hashlib.sha256(raw_key.encode()).hexdigest() if raw_key else None
    containers = snapshot.current(host).containers
    current = _by_name(containers)
    force = template_restored()

    # The env files the planned containers use (the replicas of the instances layout share one).
    env_files = list(dict.fromkeys(p.env_file or env_file_path(config.vllm_config_dir, p.container_name)
                                   for p in plans))
    # First: a removed instance may hold a port or GPUs a new one is given (one instance -> two on its port).
    for name in stale_containers(containers, {p.container_name for p in plans}):
        host.log(f"container {name}: removed, no longer configured")
        yield StringCommand("docker", "rm", "-f", QuoteString(name))
        if (stale_env := env_file_path(config.vllm_config_dir, name)) not in env_files:
            yield StringCommand("rm", "-f", QuoteString(stale_env))

    for env_file in env_files:
        if raw_key:
            yield from secret_file_commands(env_file, f"VLLM_API_KEY={raw_key}\n", "root")
        elif (env_state := gpu_files.state(env_file)) is not None and env_state.kind == "file":
            yield StringCommand("rm", "-f", QuoteString(env_file))
    for plan in plans:
        for warning in plan.warnings:
            host.log(f"{plan.container_name}: {warning}")
        spec = container_spec(plan, template_sha256, api_key_sha256=key_digest)
        wanted = spec_hash(spec)
        why = container_decision(current.get(plan.container_name), wanted, force)
        if why is None:
            host.noop(f"container {plan.container_name} runs spec {wanted[:12]}")
            continue
        cap = plan.capacity
        host.log(f"container {plan.container_name}: (re)create, {why}: {spec['image']} {' '.join(plan.vllm_args)} "
                 f"(KV cache {cap.kv_cache_tokens} tokens, {cap.max_concurrency:.1f}x at max_model_len)")
        yield StringCommand("docker", "image", "inspect", QuoteString(spec["image"]), ">/dev/null", "2>&1", "||",
                            "docker", "pull", "--quiet", QuoteString(spec["image"]))
        if plan.container_name in current:
            yield StringCommand("docker", "rm", "-f", QuoteString(plan.container_name))
        yield StringCommand("docker", *(QuoteString(a) for a in docker_run_args(spec)))


@operation(is_idempotent=False)
def verified(config: ServeConfig, python: str, script: str, health_timeout: int, smoke_test: bool):
    """Each instance answers /health (within health_timeout seconds) and, with smoke_test, one chat completion.

    Runs every time, but as a fact: a passing check yields no command, so it never counts as a change; a failing
    one yields a command that fails with verify.py's message. The host snapshot reads each container a full check
    recorded, its start time and its /health: where those hold, the instance needs no command of its own.
    """
    if not state.is_executing:  # predicting changes: a check is not one, and must not wait for /health now
        return
    try:
        plans = host_plans(config)
    except NotPlannable as exc:
        yield fail(str(exc))
        return
    failures = []
    # read once per run, and again after anything changed the host: in a no-op re-run, the run's first read
    verified_before = snapshot.current(host).verified
    for plan in plans:
        url = f"http://127.0.0.1:{plan.port}"
        if (mark := verified_before.get(plan.container_name)) and mark.holds(url):
            host.log(f"{plan.container_name} on 127.0.0.1:{plan.port} healthy; this container (not restarted "
                     "since) passed the full check before")
            continue
        verdict = host.get_fact(
            VllmVerdict, python=python, script=script, url=url,
            model=plan.served_model_name, timeout_s=health_timeout, smoke_test=smoke_test, env_file=plan.env_file,
            container=plan.container_name,
        )
        if verdict is not None and verdict.ok:
            r = verdict.result
            if r.get("verified_before"):
                host.log(f"{plan.container_name} on 127.0.0.1:{plan.port} healthy; this container (not restarted "
                         "since) passed the full check before")
                continue
            host.log(f"{plan.container_name} on 127.0.0.1:{plan.port} verified"
                     + (f": {r['model']} answered {r['reply']!r} in {r['latency_s']}s" if "reply" in r else ""))
        else:
            failures.append(f"{plan.container_name} on 127.0.0.1:{plan.port}: "
                            + (verdict.error if verdict is not None else "verify.py printed nothing"))
    if failures:
        yield fail("vLLM verification failed: " + " | ".join(failures))
