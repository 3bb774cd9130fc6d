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
# "throughput" = "auto"'s engine values plus fp8 KV cache and bf16 on CC >= 8.9 (_host_choice).
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
    capacity: Capacity  # of one replica (one engine: what vLLM prints at start-up)
    model_mount: Mount  # model_dir -> /model/<its basename> (what the model argument names)
    template_mount: Mount  # <vllm_config_dir>/<template> -> /app/<template> (what --chat-template names)
    container_port: int  # the API port inside the container
    bind: str  # host address the port is published on when the container has an API key (else 127.0.0.1)
    env_file: str | None  # host path of the 0600 env file with the API key; None without a key
    gpus_request: str  # docker --gpus value: "all", or '"device=0,1"' for an instance of vllm_instances
    ulimits: dict[str, str]
    restart_policy: str
    cpuset_cpus: str | None
    warnings: list[str] = field(default_factory=list)
    data_parallel_size: int = 1  # replicas behind this container's one API server (--data-parallel-size)
    layout: str = "tensor-parallel"  # how the host's GPUs were split: data-parallel | instances | tensor-parallel
    max_model_len: int = 0  # the --max-model-len it serves (vllm_max_model_len, or what "auto" resolved to)


# Tensor parallel sizes Qwen3-32B splits into (64 attention heads, 8 KV heads), smallest first.
_TP_SIZES = tuple(n for n in (1, 2, 4, 8) if QWEN3_32B_AWQ.num_attention_heads % n == 0
                  and QWEN3_32B_AWQ.num_kv_heads % n == 0)


@dataclass
class _HostChoice:
    """What every instance on a host shares: image, release, dtype/kernel, engine values."""

    image: str
    rel: Release
    dtype: str | None
    quant: str | None
    kv_cache_dtype: str
    prof: dict[str, Any]
    warnings: list[str]


def plan_instances(gpus: list[GPU], config: ServeConfig, *, driver_version: str | None = None) -> list[InstancePlan]:
    """Plan every vLLM instance on a host with these GPUs: vllm_instances as given, else the layout."""
    if not gpus:
        raise PlanError("preflight_require_gpu", "no NVIDIA GPU is visible, so there is nothing to plan for")
    unknown = [g.index for g in gpus if g.compute_capability == (0, 0)]
    if unknown:
        raise PlanError("preflight_require_gpu", f"compute capability of GPU(s) {unknown} unknown (no NVIDIA driver "
                        "loaded yet): cannot plan vLLM instances for them")
    by_index = {g.index: g for g in gpus}
    driver = driver_version or gpus[0].driver_version or config.nvidia_driver_version
    if config.vllm_instances is not None:
        plans = []
        for inst in config.vllm_instances:
            missing = [i for i in inst.gpus if i not in by_index]
            if missing:
                raise PlanError("vllm_instances", f"vllm_instances: instance {inst.name!r} asks for GPU(s) {missing}, "
                                f"but the host has GPUs {sorted(by_index)}")
            given = [by_index[i] for i in inst.gpus]
            host = _host_choice(given, config, driver)
            warnings = list(host.warnings)
            tp = _tensor_parallel(config, len(given), warnings)
            gpus_request = '"device=' + ",".join(str(g.index) for g in given[:tp]) + '"'
            plans.append(_plan_one(inst.name, inst.port, inst.served_model_name, given[:tp], tp, 1, gpus_request,
                                   config, host, warnings, "tensor-parallel"))
        return plans
    return _plan_layout(sorted(gpus, key=lambda g: g.index), config, driver)


def _plan_layout(gpus: list[GPU], c: ServeConfig, driver: str) -> list[InstancePlan]:
    """One host, no vllm_instances: the smallest tensor parallel size whose replica holds vllm_min_full_sequences
    full sequences, then replicas over the remaining GPUs (vLLM docs, "Data Parallel Deployment": a model that fits
    one GPU serves more as replicas than split, each TP layer adding all-reduces per token)."""
    host = _host_choice(gpus, c, driver)
    warnings = list(host.warnings)
    count = len(gpus)
    target_len = c.vllm_max_model_len if c.vllm_max_model_len != "auto" else QWEN3_32B_AWQ.max_position_embeddings
    if c.vllm_tensor_parallel_size != "auto" or c.vllm_layout == "tensor-parallel":
        tp = _tensor_parallel(c, count, warnings)
    else:
        tp = _smallest_tp(gpus, host, c, target_len, warnings)
    replicas = 1 if c.vllm_layout == "tensor-parallel" else count // tp
    unused = [g.index for g in gpus[replicas * tp:]]
    if unused and c.vllm_layout != "tensor-parallel":
        warnings.append(f"GPU(s) {unused} left idle: {count} GPUs do not split into replicas of {tp}")
    layout = c.vllm_layout
    if replicas == 1:
        layout = "tensor-parallel"
    elif layout == "auto":
        # vLLM's own data parallelism (one API server, internal load balancing) where the release has the flag
        layout = "data-parallel" if "--data-parallel-size" in host.rel.flags else "instances"
    elif layout == "data-parallel" and "--data-parallel-size" not in host.rel.flags:
        raise PlanError("vllm_layout", f"vllm_layout=data-parallel: vLLM {host.rel.version} has no "
                        "--data-parallel-size; use 'instances' or 'auto'")
    if layout == "instances":
        return [_plan_one(f"{c.vllm_container_name}-{n + 1}", c.vllm_port + n, None, gpus[n * tp:(n + 1) * tp], tp,
                          1, '"device=' + ",".join(str(g.index) for g in gpus[n * tp:(n + 1) * tp]) + '"', c, host,
                          list(warnings), layout)
                for n in range(replicas)]
    dp = replicas if layout == "data-parallel" else 1
    used = gpus[:tp * dp]
    gpus_request = "all" if len(used) == count else '"device=' + ",".join(str(g.index) for g in used) + '"'
    return [_plan_one(c.vllm_container_name, c.vllm_port, None, used, tp, dp, gpus_request, c, host, warnings,
                      layout)]


def _smallest_tp(gpus: list[GPU], host: _HostChoice, c: ServeConfig, max_model_len: int, warnings: list[str]) -> int:
    """The smallest tensor parallel size (of those <= the GPU count) whose replica holds vllm_min_full_sequences
    sequences of `max_model_len`; the largest such size, with a warning, when none does."""
    sizes = [n for n in _TP_SIZES if n <= len(gpus)]
    held: dict[int, float] = {}
    for tp in sizes:
        try:
            held[tp] = _capacity_for(gpus[:tp], tp, host, c, max_model_len).max_concurrency
        except PlanError:
            held[tp] = 0.0
        if held[tp] >= c.vllm_min_full_sequences:
            return tp
    tp = sizes[-1]
    warnings.append(f"no tensor parallel size up to {tp} holds vllm_min_full_sequences={c.vllm_min_full_sequences} "
                    f"sequences of {max_model_len} tokens (TP{tp}: {held[tp]:.2f}); using TP{tp}")
    return tp


def _tensor_parallel(config: ServeConfig, count: int, warnings: list[str]) -> int:
    tp = config.vllm_tensor_parallel_size
    if tp == "auto":
        # TP = GPU count (vLLM docs, "Distributed inference": TP across the GPUs of one node) when it
        # divides the model's heads; otherwise the largest size that does.
        fits = [n for n in reversed(_TP_SIZES) if n <= count]
        tp = fits[0]
        if tp != count:
            warnings.append(f"{count} GPUs but Qwen3-32B's 64/8 heads split only into 1, 2, 4 or 8: "
                            f"using tensor parallel size {tp}; give the rest to a second instance (vllm_instances)")
        return tp
    if tp > count:
        raise PlanError("vllm_tensor_parallel_size", f"vllm_tensor_parallel_size={tp} exceeds the {count} GPU(s) "
                        "this instance has: use at most that many, or \"auto\"")
    return tp


def _image(vllm_image: str, vllm_version: str | None, driver: str, min_cc: float,
           brands: set[str]) -> tuple[str, Release, tuple[int, int]]:
    if vllm_image == "auto":
        try:
            chosen = versions.newest_image_for(driver, min_cc, brands)
        except ValueError as exc:
            raise PlanError("nvidia_driver_version", str(exc)) from None
        return chosen.ref, chosen.release, chosen.cuda
    try:
        version = versions.version_of_image(vllm_image, vllm_version)
        rel = versions.release(version)
        return vllm_image, rel, versions.cuda_of_image(vllm_image, rel)
    except ValueError as exc:
        raise PlanError("vllm_image", str(exc)) from None


def _profile(config: ServeConfig, gpus: list[GPU]) -> dict[str, Any]:
    """The profile's engine values, with every explicitly set one in their place."""
    prof = dict(PROFILES["auto" if config.vllm_profile == "throughput" else config.vllm_profile])
    if config.vllm_profile in ("auto", "throughput") and min(g.memory_mib for g in gpus) < _SMALL_GPU_MIB:
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


# Profile "throughput": fp8 KV cache with bf16 activations where the GPU has fp8 (CC >= 8.9, Ada/Hopper). vLLM 0.26.0
# offline on one H200, 256 x (1024 -> 256): 1885.1 output tok/s against 1818.8 with the auto profile's flags, and
# twice the KV tokens (quoted in tests/fixtures/vllm_logs/h200_tp1_u093_b8192_fp8.json and ..._fp16.json).
THROUGHPUT_MIN_CC = 8.9


def _host_choice(gpus: list[GPU], c: ServeConfig, driver: str) -> _HostChoice:
    """Image, dtype and kernel fit the weakest of the GPUs given (with --gpus all the container sees them all)."""
    warnings: list[str] = []
    min_cc = min(g.cc for g in gpus)
    brands = {versions.gpu_brand(g.name) for g in gpus}
    image, rel, image_cuda = _image(c.vllm_image, c.vllm_version, driver, min_cc, brands)
    kv_cache_dtype = c.vllm_kv_cache_dtype
    dtype_setting = c.vllm_dtype
    if c.vllm_profile == "throughput":
        if min_cc >= THROUGHPUT_MIN_CC:
            kv_cache_dtype = "fp8" if kv_cache_dtype == "auto" else kv_cache_dtype
            dtype_setting = "bfloat16" if dtype_setting == "auto" else dtype_setting
        else:
            warnings.append(f"vllm_profile=throughput: compute capability {min_cc} < {THROUGHPUT_MIN_CC} has no fp8: "
                            "KV cache and dtype as in the auto profile")
    dtype = dtype_setting if dtype_setting != "auto" else compat.auto_dtype(min_cc, kv_cache_dtype)
    quant = c.vllm_quantization if c.vllm_quantization != "auto" else compat.auto_quantization(min_cc)
    # quantization None: vLLM upgrades the AWQ checkpoint to awq_marlin where it can
    result = compat.check(rel, gpus, driver_version=driver, dtype=dtype or "float16", kv_cache_dtype=kv_cache_dtype,
                          quantization=quant or "awq_marlin", image_cuda=image_cuda, brands=brands)
    if result.errors:
        raise PlanError(result.error_keys[0], "; ".join(result.errors))
    warnings += result.warnings
    return _HostChoice(image=image, rel=rel, dtype=dtype, quant=quant, kv_cache_dtype=kv_cache_dtype,
                       prof=_profile(c, gpus), warnings=warnings)


def _plan_one(name: str, port: int, served_name: str | None, gpus: list[GPU], tp: int, dp: int, gpus_request: str,
              c: ServeConfig, host: _HostChoice, warnings: list[str], layout: str) -> InstancePlan:
    """One container running `dp` replicas of tensor parallel size `tp` on `gpus` (len tp x dp)."""
    rel, prof = host.rel, host.prof
    replica = gpus[:tp]
    if c.vllm_max_model_len == "auto":
        max_model_len = _largest_model_len(replica, tp, host, c)
    else:
        max_model_len = c.vllm_max_model_len
    if prof["enable_chunked_prefill"] is False and prof["max_num_batched_tokens"] < max_model_len:
        raise PlanError("vllm_max_num_batched_tokens", f"with chunked prefill off, vllm_max_num_batched_tokens "
                        f"({prof['max_num_batched_tokens']}) must be >= vllm_max_model_len ({max_model_len})")
    cap = _capacity_for(replica, tp, host, c, max_model_len)
    if cap.max_concurrency < 2:
        warnings.append(f"KV cache holds only {cap.max_concurrency:.2f} requests of {max_model_len} tokens")

    served = served_name or c.vllm_served_model_name
    model_mount, template_mount = c.model_mount, c.template_mount
    # vLLM 0.26.0 warns that `vllm serve --model` will be removed: the model goes first, positionally [M]
    # (../vllm-h200-serve server logs); older releases get --model, which every release accepts.
    if rel.key >= POSITIONAL_MODEL_FROM:
        args = [model_mount.container]
    else:
        args = ["--model", model_mount.container]
    args += ["--served-model-name", served, "--tensor-parallel-size", str(tp)]
    if dp > 1:
        args += ["--data-parallel-size", str(dp)]
    if host.dtype:
        args += ["--dtype", host.dtype]
    if host.quant:
        args += ["--quantization", host.quant]
    args += ["--max-model-len", str(max_model_len),
             "--max-num-batched-tokens", str(prof["max_num_batched_tokens"]),
             "--gpu-memory-utilization", str(prof["gpu_memory_utilization"]),
             "--block-size", str(prof["block_size"])]
    if prof["max_num_seqs"] is not None:
        args += ["--max-num-seqs", str(prof["max_num_seqs"])]
    args += _toggle(rel, "chunked-prefill", prof["enable_chunked_prefill"], rel.chunked_prefill_default)
    args += _toggle(rel, "prefix-caching", prof["enable_prefix_caching"], rel.prefix_caching_default)
    if host.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", host.kv_cache_dtype]
    env: dict[str, str] = {}
    if tp > 2 and _pcie_only(replica):
        # Custom all-reduce needs P2P/NVLink; on PCIe-only cards with TP > 2 vLLM disables it and NCCL P2P
        # can hang (vllm#8087, vllm#14449): turn both off explicitly.
        args.append("--disable-custom-all-reduce")
        env["NCCL_P2P_DISABLE"] = "1"
        warnings.append("PCIe-only GPUs with tensor parallel size > 2: custom all-reduce and NCCL P2P disabled")
    args += ["--chat-template", template_mount.container]
    args += _api_flags(rel, c)
    args = _merge_extra(args, list(c.vllm_extra_args), rel)
    env.update(c.vllm_env)
    return InstancePlan(container_name=name, port=port, gpu_indices=[g.index for g in gpus],
                        served_model_name=served, image=host.image, vllm_version=rel.version,
                        tensor_parallel_size=tp, vllm_args=args, env=env, capacity=cap,
                        model_mount=model_mount, template_mount=template_mount, container_port=CONTAINER_PORT,
                        bind=c.vllm_bind, env_file=_env_file(c, name, layout) if c.keyed else None,
                        gpus_request=gpus_request, ulimits=dict(c.vllm_ulimits), restart_policy=c.vllm_restart_policy,
                        cpuset_cpus=c.vllm_cpuset_cpus, warnings=warnings, data_parallel_size=dp, layout=layout,
                        max_model_len=max_model_len)


def _env_file(c: ServeConfig, name: str, layout: str) -> str:
    """The API key's env file: one per container, except the replicas of the instances layout, which share
    vllm_container_name's (the file the host snapshot reads: gpu_llm.layout.instance_names)."""
    return env_file_path(c.vllm_config_dir, c.vllm_container_name if layout == "instances" else name)


POSITIONAL_MODEL_FROM = (0, 26, 0)
# Qwen's vLLM guide (qwen.readthedocs.io/en/latest/deployment/vllm.html, "Parsing tool calls"): Qwen3 emits hermes-
# style <tool_call>{...}</tool_call>, parsed by `--enable-auto-tool-choice --tool-call-parser hermes`.
TOOL_CALL_PARSER = "hermes"
# The template renders an empty think block unless a request sends chat_template_kwargs {"enable_thinking": true};
# 0.26's qwen3 parser reads the same kwargs (request merged over this server default) to tell thinking from not.
NON_THINKING_DEFAULT = '{"enable_thinking": false}'


def _api_flags(rel: Release, c: ServeConfig) -> list[str]:
    """Tool-call and reasoning parsing, where the release has them (Release.reasoning_parser says where the parser
    keeps a non-thinking answer in content)."""
    args: list[str] = []
    if c.vllm_tool_calls and {"--enable-auto-tool-choice", "--tool-call-parser"} <= rel.flags:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", TOOL_CALL_PARSER]
    if c.vllm_reasoning and rel.reasoning_parser and "--reasoning-parser" in rel.flags:
        if "--enable-reasoning" in rel.flags:  # 0.8.5-0.9.x: the parser runs only with --enable-reasoning
            args.append("--enable-reasoning")
        args += ["--reasoning-parser", rel.reasoning_parser]
        if "--default-chat-template-kwargs" in rel.flags:
            args += ["--default-chat-template-kwargs", NON_THINKING_DEFAULT]
    return args


def _largest_model_len(replica: list[GPU], tp: int, host: _HostChoice, c: ServeConfig) -> int:
    """vllm_max_model_len "auto": the largest context (<= the model's 40960, a multiple of the block size) whose
    vllm_min_full_sequences full sequences fit one replica's KV cache (blocks per sequence = ceil(len / block))."""
    block = host.prof["block_size"]
    # capacity at one block per sequence: max_concurrency = the KV cache's blocks
    blocks = int(_capacity_for(replica, tp, host, c, block, check=False).max_concurrency)
    length = min(QWEN3_32B_AWQ.max_position_embeddings, (blocks // c.vllm_min_full_sequences) * block)
    if length < 256:
        raise PlanError("vllm_min_full_sequences", f"vllm_max_model_len=auto: TP{tp} holds {blocks * block} KV tokens, "
                        f"not {c.vllm_min_full_sequences} sequences of even 256 tokens; lower "
                        "vllm_min_full_sequences or use more GPUs per replica (vllm_tensor_parallel_size)")
    return length


def _toggle(rel: Release, name: str, wanted: bool | None, default_on: bool) -> list[str]:
    if wanted is None or wanted == default_on:
        return []
    flag = f"--enable-{name}" if wanted else f"--no-enable-{name}"
    return [flag] if flag in rel.flags else []


def _pcie_only(gpus: list[GPU]) -> bool:
    return all(g.interconnect == "pcie" or (g.interconnect is None and "GeForce" in g.name) for g in gpus)


def _capacity_for(gpus: list[GPU], tp: int, host: _HostChoice, c: ServeConfig, max_model_len: int,
                  check: bool = True) -> Capacity:
    prof = host.prof
    try:
        return _capacity.estimate(
            gpus, tp, gpu_memory_utilization=prof["gpu_memory_utilization"],
            max_num_batched_tokens=prof["max_num_batched_tokens"], max_num_seqs=prof["max_num_seqs"] or 256,
            block_size=prof["block_size"], max_model_len=max_model_len,
            kv_cache_dtype=host.kv_cache_dtype, model=QWEN3_32B_AWQ, require_one_sequence=check)
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
        _, _, cuda = _image(config.vllm_image, config.vllm_version, driver="", min_cc=0.0, brands=set())
    return f"{cuda[0]}.{cuda[1]}"


def gpus_needed(config: ServeConfig) -> tuple[int, str]:
    """How many GPUs the settings ask for at least, and the setting that asks (checked in preflight against
    the GPUs on the PCI bus, before a driver exists to tell their memory)."""
    if config.vllm_instances is not None:
        return max(i for inst in config.vllm_instances for i in inst.gpus) + 1, "vllm_instances"
    if config.vllm_tensor_parallel_size != "auto":
        return config.vllm_tensor_parallel_size, "vllm_tensor_parallel_size"
    # auto: the planner picks TP 1 where one GPU holds vllm_min_full_sequences sequences
    return 1, "vllm_tensor_parallel_size"
