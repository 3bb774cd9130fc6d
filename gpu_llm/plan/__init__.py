"""Pure serving planner: GPUs + ServeConfig -> vLLM instances (image, arguments, env, capacity, container)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpu_llm.plan import capacity as _capacity
from gpu_llm.plan import compat, versions
from gpu_llm.plan.config import (
    CONTAINER_MODEL_ROOT,
    CONTAINER_PORT,
    CONTAINER_TEMPLATE_DIR,
    InstanceConfig,
    Mount,
    ServeConfig,
    env_file_path,
    template_host_path,
)
from gpu_llm.plan.types import GPU, QWEN3_32B_AWQ, Capacity
from gpu_llm.plan.versions import Release

__all__ = [
    "CONTAINER_MODEL_ROOT", "CONTAINER_PORT", "CONTAINER_TEMPLATE_DIR", "PROFILES", "InstanceConfig", "InstancePlan",
    "Mount", "PlanError", "ServeConfig", "env_file_path", "gpus_needed", "plan_instances", "required_cuda",
    "template_host_path",
]


class PlanError(ValueError):
    """A configuration that cannot run; `key` names the setting to change."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


# Profiles. balanced = github.com/jackypanster/deploy-qwen3-32b-awq's flags (util 0.93, 4096 batched tokens, block 32, chunked
# prefill); max-context = github.com/jackypanster/qwen3-32b-awq's 4x2080 Ti run.sh (util 0.96, 32768 batched tokens,
# block 16, prefix caching, 64 seqs); auto = 8192 batched tokens and 256 seqs, the best-measured config on an
# H200 (vLLM 0.26.0: "marlin-auto" 1818.8 tok/s vs 1498.0 with 64 seqs; tests/fixtures/vllm_logs/h200_*), 4096 on small cards.
PROFILES: dict[str, dict[str, Any]] = {
    "balanced": {"gpu_memory_utilization": 0.93, "max_num_batched_tokens": 4096, "block_size": 32,
                 "enable_chunked_prefill": True, "enable_prefix_caching": None, "max_num_seqs": None},
    "max-context": {"gpu_memory_utilization": 0.96, "max_num_batched_tokens": 32768, "block_size": 16,
                    "enable_chunked_prefill": None, "enable_prefix_caching": True, "max_num_seqs": 64},
    "auto": {"gpu_memory_utilization": 0.93, "max_num_batched_tokens": 8192, "block_size": 16,
             "enable_chunked_prefill": None, "enable_prefix_caching": None, "max_num_seqs": 256},
}
# Cards with less than this much memory get the smaller activation budget in the auto profile.
_SMALL_GPU_MIB = 40 * 1024


@dataclass
class InstancePlan:
    """One vLLM container: what it runs, what it can hold, and everything its docker spec is made of
    (gpu_llm.plan.container.container_spec needs nothing else)."""

    container_name: str
    port: int  # host port
    gpu_indices: list[int]
    served_model_name: str
    image: str
    vllm_version: str
    tensor_parallel_size: int
    vllm_args: list[str]
    env: dict[str, str]
    capacity: Capacity
    model_mount: Mount  # model_dir -> /model/<its basename> (what --model names)
    template_mount: Mount  # <vllm_config_dir>/<template> -> /app/<template> (what --chat-template names)
    container_port: int  # the API port inside the container
    bind: str  # host address the port is published on when the container has an API key (else 127.0.0.1)
    env_file: str | None  # host path of the 0600 env file with the API key; None without a key
    gpus_request: str  # docker --gpus value: "all", or '"device=0,1"' for an instance of vllm_instances
    ulimits: dict[str, str]
    restart_policy: str
    cpuset_cpus: str | None
    warnings: list[str] = field(default_factory=list)


def plan_instances(gpus: list[GPU], config: ServeConfig, *, driver_version: str | None = None) -> list[InstancePlan]:
    """Plan every configured vLLM instance on a host with these GPUs."""
    if not gpus:
        raise PlanError("preflight_require_gpu", "no NVIDIA GPU is visible, so there is nothing to plan for")
    unknown = [g.index for g in gpus if g.compute_capability == (0, 0)]
    if unknown:
        raise PlanError("preflight_require_gpu", f"compute capability of GPU(s) {unknown} unknown (no NVIDIA driver "
                        "loaded yet): cannot plan vLLM instances for them")
    by_index = {g.index: g for g in gpus}
    driver = driver_version or gpus[0].driver_version or config.nvidia_driver_version
    plans = []
    for inst in _instances(config, gpus):
        missing = [i for i in inst.gpus if i not in by_index]
        if missing:
            raise PlanError("vllm_instances", f"vllm_instances: instance {inst.name!r} asks for GPU(s) {missing}, "
                            f"but the host has GPUs {sorted(by_index)}")
        plans.append(_plan_one(inst, [by_index[i] for i in inst.gpus], config, driver))
    return plans


def _instances(config: ServeConfig, gpus: list[GPU]) -> tuple[InstanceConfig, ...]:
    """The configured instances: vllm_instances, or one with every GPU."""
    if config.vllm_instances is None:
        return (InstanceConfig(config.vllm_container_name, config.vllm_port, tuple(g.index for g in gpus)),)
    return config.vllm_instances


def _tensor_parallel(config: ServeConfig, count: int, warnings: list[str]) -> int:
    tp = config.vllm_tensor_parallel_size
    if tp == "auto":
        # TP = GPU count (vLLM docs, "Distributed inference": TP across the GPUs of one node) when it
        # divides the model's heads; otherwise the largest size that does.
        fits = [n for n in (8, 4, 2, 1) if n <= count]
        tp = fits[0]
        if tp != count:
            warnings.append(f"{count} GPUs but Qwen3-32B's 64/8 heads split only into 1, 2, 4 or 8: "
                            f"using tensor parallel size {tp}; give the rest to a second instance (vllm_instances)")
        return tp
    if tp > count:
        raise PlanError("vllm_tensor_parallel_size", f"vllm_tensor_parallel_size={tp} exceeds the {count} GPU(s) "
                        "this instance has: use at most that many, or \"auto\"")
    return tp


def _image(vllm_image: str, vllm_version: str | None, driver: str, min_cc: float) -> tuple[str, Release]:
    if vllm_image == "auto":
        rel = versions.newest_release_for(versions.cuda_for_driver(driver), min_cc)
        return f"vllm/vllm-openai:v{rel.version}", rel
    try:
        version = versions.version_of_image(vllm_image, vllm_version)
        return vllm_image, versions.release(version)
    except ValueError as exc:
        raise PlanError("vllm_image", str(exc)) from None


def _profile(config: ServeConfig, gpus: list[GPU]) -> dict[str, Any]:
    """The profile's engine values, with every explicitly set one in their place."""
    prof = dict(PROFILES[config.vllm_profile])
    if config.vllm_profile == "auto" and min(g.memory_mib for g in gpus) < _SMALL_GPU_MIB:
        prof["max_num_batched_tokens"] = 4096
    explicit = {
        "gpu_memory_utilization": config.vllm_gpu_memory_utilization,
        "max_num_batched_tokens": config.vllm_max_num_batched_tokens,
        "block_size": config.vllm_block_size,
        "enable_chunked_prefill": config.vllm_enable_chunked_prefill,
        "enable_prefix_caching": config.vllm_enable_prefix_caching,
        "max_num_seqs": config.vllm_max_num_seqs,
    }
    assert explicit.keys() == prof.keys()
    prof.update({key: value for key, value in explicit.items() if value is not None})
    return prof


def _plan_one(inst: InstanceConfig, gpus: list[GPU], c: ServeConfig, driver: str) -> InstancePlan:
    warnings: list[str] = []
    tp = _tensor_parallel(c, len(gpus), warnings)
    # Image, dtype and kernel fit the weakest of every GPU the instance is given (with --gpus all the container
    # sees them all); memory and interconnect are those of the `tp` GPUs its engine runs on.
    min_cc = min(g.cc for g in gpus)
    image, rel = _image(c.vllm_image, c.vllm_version, driver, min_cc)
    dtype = c.vllm_dtype if c.vllm_dtype != "auto" else compat.auto_dtype(min_cc, c.vllm_kv_cache_dtype)
    quant = c.vllm_quantization if c.vllm_quantization != "auto" else compat.auto_quantization(min_cc)
    # quantization None: vLLM upgrades the AWQ checkpoint to awq_marlin where it can
    result = compat.check(rel, gpus, driver_version=driver, dtype=dtype or "float16",
                          kv_cache_dtype=c.vllm_kv_cache_dtype, quantization=quant or "awq_marlin")
    if result.errors:
        raise PlanError(result.error_keys[0], "; ".join(result.errors))
    warnings += result.warnings
    gpus = gpus[:tp]
    prof = _profile(c, gpus)

    if prof["enable_chunked_prefill"] is False and prof["max_num_batched_tokens"] < c.vllm_max_model_len:
        raise PlanError("vllm_max_num_batched_tokens", f"with chunked prefill off, vllm_max_num_batched_tokens "
                        f"({prof['max_num_batched_tokens']}) must be >= vllm_max_model_len ({c.vllm_max_model_len})")

    cap = _capacity_for(gpus, tp, prof, c)
    if cap.max_concurrency < 2:
        warnings.append(f"KV cache holds only {cap.max_concurrency:.2f} requests of {c.vllm_max_model_len} tokens")

    served = inst.served_model_name or c.vllm_served_model_name
    model_mount, template_mount = c.model_mount, c.template_mount
    args = ["--model", model_mount.container, "--served-model-name", served, "--tensor-parallel-size", str(tp)]
    if dtype:
        args += ["--dtype", dtype]
    if quant:
        args += ["--quantization", quant]
    args += ["--max-model-len", str(c.vllm_max_model_len),
             "--max-num-batched-tokens", str(prof["max_num_batched_tokens"]),
             "--gpu-memory-utilization", str(prof["gpu_memory_utilization"]),
             "--block-size", str(prof["block_size"])]
    if prof["max_num_seqs"] is not None:
        args += ["--max-num-seqs", str(prof["max_num_seqs"])]
    args += _toggle(rel, "chunked-prefill", prof["enable_chunked_prefill"], rel.chunked_prefill_default)
    args += _toggle(rel, "prefix-caching", prof["enable_prefix_caching"], rel.prefix_caching_default)
    if c.vllm_kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", c.vllm_kv_cache_dtype]
    env: dict[str, str] = {}
    if tp > 2 and _pcie_only(gpus):
        # Custom all-reduce needs P2P/NVLink; on PCIe-only cards with TP > 2 vLLM disables it and NCCL P2P
        # can hang (vllm#8087, vllm#14449): turn both off explicitly.
        args.append("--disable-custom-all-reduce")
        env["NCCL_P2P_DISABLE"] = "1"
        warnings.append("PCIe-only GPUs with tensor parallel size > 2: custom all-reduce and NCCL P2P disabled")
    args += ["--chat-template", template_mount.container]
    args = _merge_extra(args, list(c.vllm_extra_args), rel)
    env.update(c.vllm_env)
    indices = [g.index for g in gpus]
    # docker's --gpus value is CSV: a device list needs literal quotes around it ('"device=0,1"').
    gpus_request = "all" if c.vllm_instances is None else '"device=' + ",".join(map(str, indices)) + '"'
    return InstancePlan(container_name=inst.name, port=inst.port, gpu_indices=indices,
                        served_model_name=served, image=image, vllm_version=rel.version,
                        tensor_parallel_size=tp, vllm_args=args, env=env, capacity=cap,
                        model_mount=model_mount, template_mount=template_mount, container_port=CONTAINER_PORT,
                        bind=c.vllm_bind, env_file=env_file_path(c.vllm_config_dir, inst.name) if c.keyed else None,
                        gpus_request=gpus_request, ulimits=dict(c.vllm_ulimits), restart_policy=c.vllm_restart_policy,
                        cpuset_cpus=c.vllm_cpuset_cpus, warnings=warnings)


def _toggle(rel: Release, name: str, wanted: bool | None, default_on: bool) -> list[str]:
    if wanted is None or wanted == default_on:
        return []
    flag = f"--enable-{name}" if wanted else f"--no-enable-{name}"
    return [flag] if flag in rel.flags else []


def _pcie_only(gpus: list[GPU]) -> bool:
    return all(g.interconnect == "pcie" or (g.interconnect is None and "GeForce" in g.name) for g in gpus)


def _capacity_for(gpus: list[GPU], tp: int, prof: dict[str, Any], c: ServeConfig) -> Capacity:
    try:
        return _capacity.estimate(
            gpus, tp, gpu_memory_utilization=prof["gpu_memory_utilization"],
            max_num_batched_tokens=prof["max_num_batched_tokens"], max_num_seqs=prof["max_num_seqs"] or 256,
            block_size=prof["block_size"], max_model_len=c.vllm_max_model_len,
            kv_cache_dtype=c.vllm_kv_cache_dtype, model=QWEN3_32B_AWQ)
    except ValueError as exc:
        raise PlanError("vllm_max_model_len", str(exc)) from None


def _merge_extra(args: list[str], extra: list[str], rel: Release) -> list[str]:
    """Append vllm_extra_args; a flag given there replaces the planner's value for it."""
    user_flags = set()
    for item in extra:
        if item.startswith("--"):
            flag = item.split("=", 1)[0]
            if flag not in rel.flags:
                raise PlanError("vllm_extra_args", f"vllm_extra_args: {flag} does not exist in vLLM {rel.version} "
                                f"(image's release); remove it or pick another vllm_image")
            user_flags.add(flag)
    out: list[str] = []
    skip = False
    for i, item in enumerate(args):
        if skip:
            skip = False
            continue
        if item in user_flags:
            skip = i + 1 < len(args) and not args[i + 1].startswith("--")
            continue
        out.append(item)
    return out + list(extra)


def required_cuda(config: ServeConfig) -> str:
    """The CUDA version a kept (non-apt) driver must support: the pinned image's, or with vllm_image "auto" the
    oldest release's (auto then picks the newest image that driver runs)."""
    if config.vllm_image == "auto":
        cuda = min(rel.cuda for rel in versions.VLLM_RELEASES.values())
    else:
        _, rel = _image(config.vllm_image, config.vllm_version, driver="", min_cc=0.0)
        cuda = versions.cuda_of_image(config.vllm_image, rel)
    return f"{cuda[0]}.{cuda[1]}"


def gpus_needed(config: ServeConfig) -> tuple[int, str]:
    """How many GPUs the settings ask for at least, and the setting that asks (checked in preflight against
    the GPUs on the PCI bus, before a driver exists to tell their memory)."""
    if config.vllm_instances is not None:
        return max(i for inst in config.vllm_instances for i in inst.gpus) + 1, "vllm_instances"
    if config.vllm_tensor_parallel_size != "auto":
        return config.vllm_tensor_parallel_size, "vllm_tensor_parallel_size"
    return 1, "vllm_tensor_parallel_size"
