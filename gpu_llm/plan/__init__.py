"""Pure serving planner: GPUs + settings -> vLLM instances (image, arguments, env, capacity)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpu_llm.plan import capacity as _capacity
from gpu_llm.plan import compat, versions
from gpu_llm.plan.types import GPU, QWEN3_32B_AWQ, Capacity

# In-container paths (host paths are mounted here).
CONTAINER_MODEL_ROOT = "/model"
CONTAINER_TEMPLATE_DIR = "/app"
CONTAINER_PORT = 8000


class PlanError(ValueError):
    """A configuration that cannot run; `key` names the setting to change."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


# Profiles. balanced = the seed blog's flags (seeds/000: util 0.93, 4096 batched tokens, block 32, chunked
# prefill); max-context = the seed's 4x2080 Ti "extreme" recipe (seeds/003: util 0.96, 32768 batched tokens,
# block 16, prefix caching, 64 seqs); auto = 8192 batched tokens and 256 seqs, the best-measured config on an
# H200 (reference/vllm-h200-results.md: "marlin-auto" 1818.8 tok/s vs 1498.0 with 64 seqs), 4096 on small cards.
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
# vLLM's --dtype default for an AWQ checkpoint is float16; bf16 needs CC >= 8.0 (Ampere).
_BF16_MIN_CC = 8.0
_AWQ_MIN_CC = compat.AWQ_MIN_CC
_MARLIN_MIN_CC = compat.MARLIN_MIN_CC


@dataclass
class InstancePlan:
    """One vLLM container: what it runs and what it can hold."""

    container_name: str
    port: int
    gpu_indices: list[int]
    served_model_name: str
    image: str
    vllm_version: str
    tensor_parallel_size: int
    vllm_args: list[str]
    env: dict[str, str]
    capacity: Capacity
    warnings: list[str] = field(default_factory=list)


def plan_instances(gpus: list[GPU], settings: Any, *, driver_version: str | None = None) -> list[InstancePlan]:
    """Plan every configured vLLM instance on a host with these GPUs."""
    if not gpus:
        raise PlanError("preflight_require_gpu", "no NVIDIA GPU is visible, so there is nothing to plan for")
    by_index = {g.index: g for g in gpus}
    driver = driver_version or gpus[0].driver_version or settings.nvidia_driver_version
    plans = []
    for inst in _instances(settings, gpus):
        missing = [i for i in inst["gpus"] if i not in by_index]
        if missing:
            raise PlanError("vllm_instances", f"vllm_instances: instance {inst['name']!r} asks for GPU(s) {missing}, "
                            f"but the host has GPUs {sorted(by_index)}")
        plans.append(_plan_one(inst, [by_index[i] for i in inst["gpus"]], settings, driver))
    return plans


def _instances(settings: Any, gpus: list[GPU]) -> list[dict[str, Any]]:
    if settings.vllm_instances is None:
        return [{"name": settings.vllm_container_name, "port": settings.vllm_port,
                 "gpus": [g.index for g in gpus], "served_model_name": settings.vllm_served_model_name}]
    return [{"served_model_name": settings.vllm_served_model_name, **item} for item in settings.vllm_instances]


def _tensor_parallel(settings: Any, count: int, warnings: list[str]) -> int:
    tp = settings.vllm_tensor_parallel_size
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


def _image(settings: Any, driver: str, min_cc: float) -> tuple[str, Any]:
    if settings.vllm_image == "auto":
        rel = versions.newest_release_for(versions.cuda_for_driver(driver), min_cc)
        return f"vllm/vllm-openai:v{rel.version}", rel
    try:
        version = versions.version_of_image(settings.vllm_image, settings.vllm_version)
        return settings.vllm_image, versions.release(version)
    except ValueError as exc:
        raise PlanError("vllm_image", str(exc)) from None


def _plan_one(inst: dict[str, Any], gpus: list[GPU], s: Any, driver: str) -> InstancePlan:
    warnings: list[str] = []
    min_cc = min(g.cc for g in gpus)
    image, rel = _image(s, driver, min_cc)
    tp = _tensor_parallel(s, len(gpus), warnings)
    gpus = gpus[:tp]
    prof = dict(PROFILES[s.vllm_profile if s.vllm_profile != "auto" else "auto"])
    if s.vllm_profile == "auto" and min(g.memory_mib for g in gpus) < _SMALL_GPU_MIB:
        prof["max_num_batched_tokens"] = 4096
    for key in prof:  # explicit settings win over the profile
        value = getattr(s, "vllm_" + key)
        if value is not None:
            prof[key] = value

    dtype = _dtype(s, min_cc)
    quant = _quantization(s, rel, min_cc, warnings)
    result = compat.check(rel, gpus, driver_version=driver, dtype=dtype or "float16",
                          kv_cache_dtype=s.vllm_kv_cache_dtype, quantization=quant or "awq_marlin")
    if result.errors:
        raise PlanError(_compat_key(result.errors[0]), "; ".join(result.errors))
    warnings += result.warnings

    if prof["enable_chunked_prefill"] is False and prof["max_num_batched_tokens"] < s.vllm_max_model_len:
        raise PlanError("vllm_max_num_batched_tokens", f"with chunked prefill off, vllm_max_num_batched_tokens "
                        f"({prof['max_num_batched_tokens']}) must be >= vllm_max_model_len ({s.vllm_max_model_len})")

    cap = _capacity_for(gpus, tp, prof, s)
    if cap.max_concurrency < 2:
        warnings.append(f"KV cache holds only {cap.max_concurrency:.2f} requests of {s.vllm_max_model_len} tokens")

    model_dir = f"{CONTAINER_MODEL_ROOT}/{s.model_dir.rsplit('/', 1)[-1]}"
    args = ["--model", model_dir, "--served-model-name", inst["served_model_name"],
            "--tensor-parallel-size", str(tp)]
    if dtype:
        args += ["--dtype", dtype]
    if quant:
        args += ["--quantization", quant]
    args += ["--max-model-len", str(s.vllm_max_model_len),
             "--max-num-batched-tokens", str(prof["max_num_batched_tokens"]),
             "--gpu-memory-utilization", str(prof["gpu_memory_utilization"]),
             "--block-size", str(prof["block_size"])]
    if prof["max_num_seqs"] is not None:
        args += ["--max-num-seqs", str(prof["max_num_seqs"])]
    args += _toggle(rel, "chunked-prefill", prof["enable_chunked_prefill"], rel.chunked_prefill_default)
    args += _toggle(rel, "prefix-caching", prof["enable_prefix_caching"], rel.prefix_caching_default)
    if s.vllm_kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", s.vllm_kv_cache_dtype]
    env: dict[str, str] = {}
    if tp > 2 and _pcie_only(gpus):
        # Custom all-reduce needs P2P/NVLink; on PCIe-only cards with TP > 2 vLLM disables it and NCCL P2P
        # can hang (vllm#8087, vllm#14449): turn both off explicitly.
        args.append("--disable-custom-all-reduce")
        env["NCCL_P2P_DISABLE"] = "1"
        warnings.append("PCIe-only GPUs with tensor parallel size > 2: custom all-reduce and NCCL P2P disabled")
    args += ["--chat-template", f"{CONTAINER_TEMPLATE_DIR}/{s.vllm_chat_template}"]
    args = _merge_extra(args, s.vllm_extra_args, rel)
    env.update(s.vllm_env)
    return InstancePlan(container_name=inst["name"], port=inst["port"], gpu_indices=[g.index for g in gpus],
                        served_model_name=inst["served_model_name"], image=image, vllm_version=rel.version,
                        tensor_parallel_size=tp, vllm_args=args, env=env, capacity=cap, warnings=warnings)


def _dtype(s: Any, min_cc: float) -> str | None:
    if s.vllm_dtype != "auto":
        return s.vllm_dtype
    if min_cc < _BF16_MIN_CC:
        return "half"  # no bf16 below Ampere (seed blog: --dtype half on Turing)
    if s.vllm_kv_cache_dtype != "auto":
        return "bfloat16"  # fp8 KV needs bf16 activations on sm90 (vllm-h200-results.md, vLLM 0.26)
    return None  # vLLM picks float16 for AWQ checkpoints


def _quantization(s: Any, rel: Any, min_cc: float, warnings: list[str]) -> str | None:
    if s.vllm_quantization != "auto":
        if s.vllm_quantization == "awq" and min_cc >= _MARLIN_MIN_CC and rel.awq_flag_forces_gemm:
            warnings.append(f"vllm_quantization=awq selects the slow AWQ GEMM kernel in vLLM {rel.version} on "
                            "CC >= 8.0; \"auto\" lets vLLM use awq_marlin")
        if s.vllm_quantization == "awq_marlin" and min_cc < _MARLIN_MIN_CC:
            raise PlanError("vllm_quantization", f"vllm_quantization=awq_marlin needs compute capability >= 8.0; "
                            f"these GPUs have {min_cc}: use \"auto\" or \"awq\"")
        return s.vllm_quantization
    if min_cc < _AWQ_MIN_CC:
        raise PlanError("vllm_quantization", f"AWQ models need compute capability >= 7.5; these GPUs have {min_cc}")
    if min_cc < _MARLIN_MIN_CC:
        return "awq"  # Turing: only the AWQ GEMM kernel exists
    return None  # vLLM detects the AWQ checkpoint and upgrades it to awq_marlin itself


def _toggle(rel: Any, name: str, wanted: bool | None, default_on: bool) -> list[str]:
    if wanted is None or wanted == default_on:
        return []
    flag = f"--enable-{name}" if wanted else f"--no-enable-{name}"
    return [flag] if flag in rel.flags else []


def _pcie_only(gpus: list[GPU]) -> bool:
    return all(g.interconnect == "pcie" or (g.interconnect is None and "GeForce" in g.name) for g in gpus)


def _capacity_for(gpus: list[GPU], tp: int, prof: dict[str, Any], s: Any) -> Capacity:
    try:
        return _capacity.estimate(
            gpus, tp, gpu_memory_utilization=prof["gpu_memory_utilization"],
            max_num_batched_tokens=prof["max_num_batched_tokens"], max_num_seqs=prof["max_num_seqs"] or 256,
            block_size=prof["block_size"], max_model_len=s.vllm_max_model_len,
            kv_cache_dtype=s.vllm_kv_cache_dtype, model=QWEN3_32B_AWQ)
    except ValueError as exc:
        raise PlanError("vllm_max_model_len", str(exc)) from None


def _merge_extra(args: list[str], extra: list[str], rel: Any) -> list[str]:
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


def _compat_key(message: str) -> str:
    for key in ("vllm_kv_cache_dtype", "vllm_dtype", "nvidia_driver_version", "vllm_quantization", "vllm_image"):
        if key in message:
            return key
    return "vllm_image"


def required_cuda(settings: Any) -> str:
    """The CUDA version a kept (non-apt) driver must support: the pinned image's, or with vllm_image "auto" the
    oldest release's (auto then picks the newest image that driver runs)."""
    if settings.vllm_image == "auto":
        cuda = min(rel.cuda for rel in versions.VLLM_RELEASES.values())
    else:
        _, rel = _image(settings, driver="", min_cc=0.0)
        cuda = versions.cuda_of_image(settings.vllm_image, rel)
    return f"{cuda[0]}.{cuda[1]}"


def gpus_needed(settings: Any) -> tuple[int, str]:
    """How many GPUs the settings ask for at least, and the setting that asks (checked in preflight against
    the GPUs on the PCI bus, before a driver exists to tell their memory)."""
    if settings.vllm_instances is not None:
        return max(i for inst in settings.vllm_instances for i in inst["gpus"]) + 1, "vllm_instances"
    if settings.vllm_tensor_parallel_size != "auto":
        return settings.vllm_tensor_parallel_size, "vllm_tensor_parallel_size"
    return 1, "vllm_tensor_parallel_size"
