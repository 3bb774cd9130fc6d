"""Refuse vLLM image / GPU / driver / dtype combinations known to fail, with the settings to change.

Every compute-capability rule lives here once: check() refuses or warns, auto_dtype() and auto_quantization()
pick what check() accepts when a setting is "auto".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpu_llm.plan.types import GPU
from gpu_llm.plan.versions import (
    BRANDS_WITH_COMPAT,
    COMPAT_DRIVER_BRANCHES,
    Release,
    cuda_for_driver,
    driver_runs,
    gpu_brand,
)

AWQ_MIN_CC = 7.5  # awq.py AWQConfig.get_min_capability() == 75, every release [W: wheels 0.8.5..0.33.0]
MARLIN_MIN_CC = 8.0  # awq_marlin.py AWQMarlinConfig.get_min_capability() == 80 [W]
BF16_MIN_CC = 8.0  # platforms/cuda.py "Bfloat16 is only supported on GPUs with compute capability of at least 8.0" [W]
_FP16 = {"half", "float16", "fp16"}
_FP8_KV = {"fp8", "fp8_e4m3", "fp8_e5m2"}


@dataclass
class CompatResult:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error_keys: list[str] = field(default_factory=list)  # per error, the setting to change

    def error(self, key: str, message: str) -> None:
        self.errors.append(message)
        self.error_keys.append(key)


def auto_dtype(min_cc: float, kv_cache_dtype: str) -> str | None:
    """--dtype for vllm_dtype "auto" on GPUs whose weakest has compute capability `min_cc`; None: vLLM's own."""
    if min_cc < BF16_MIN_CC:
        return "half"  # no bf16 below Ampere (github.com/jackypanster/deploy-qwen3-32b-awq: --dtype half on Turing)
    if kv_cache_dtype != "auto":
        return "bfloat16"  # fp8 KV needs bf16 activations on sm90 (tests/fixtures/vllm_logs/h200_tp1_u093_b8192_fp8.json, vLLM 0.26)
    return None  # vLLM picks float16 for AWQ checkpoints


def auto_quantization(min_cc: float) -> str | None:
    """--quantization for vllm_quantization "auto"; None: vLLM detects the AWQ checkpoint and upgrades it to
    awq_marlin itself (CC >= MARLIN_MIN_CC). check() refuses GPUs below AWQ_MIN_CC."""
    if min_cc < MARLIN_MIN_CC:
        return "awq"  # Turing: only the AWQ GEMM kernel exists
    return None


def _fmt(cuda: tuple[int, int]) -> str:
    return f"{cuda[0]}.{cuda[1]}"


def _compat_note(need: tuple[int, int], brands: set[str]) -> str:
    """Why the image's brand/driver clauses do not help either (where it has any)."""
    branches = COMPAT_DRIVER_BRANCHES.get(need)
    if not branches:
        return ""
    outside = sorted(b for b in brands if b not in BRANDS_WITH_COMPAT)
    if outside:
        return (f" and its NVIDIA_REQUIRE_CUDA admits older drivers only for data-center/workstation brands, "
                f"not {', '.join(outside)}")
    return f" and its NVIDIA_REQUIRE_CUDA admits only driver branches {', '.join(map(str, branches))}"


def check(
    release: Release,
    gpus: list[GPU],
    *,
    driver_version: str,
    dtype: str,
    kv_cache_dtype: str,
    quantization: str | None,
    image_cuda: tuple[int, int] | None = None,
    brands: set[str] | None = None,
) -> CompatResult:
    """Errors (will not start) and warnings (runs, but not as one would expect) for this combination."""
    out = CompatResult()
    v = release.version
    min_cc = min((g.cc for g in gpus if g.compute_capability != (0, 0)), default=None)
    names = ", ".join(sorted({g.name for g in gpus})) or "no GPU"

    try:
        driver_cuda = cuda_for_driver(driver_version)
    except ValueError as exc:
        out.error("nvidia_driver_version", str(exc))
        driver_cuda = None
    need = image_cuda or release.cuda
    brands = brands if brands is not None else {gpu_brand(g.name) for g in gpus}
    if driver_cuda is not None and need > driver_cuda and driver_runs(need, driver_version, brands):
        out.warnings.append(
            f"vllm_image with vLLM {v} is built on CUDA {_fmt(need)} and runs on driver {driver_version} (CUDA "
            f"{_fmt(driver_cuda)}) through the image's NVIDIA_REQUIRE_CUDA brand/driver clauses and CUDA minor "
            "version compatibility")
    elif driver_cuda is not None and need > driver_cuda:
        # nvidia-container-cli refuses it: "requirement error: unsatisfied condition: cuda>=12.8, please update
        # your driver" (vllm#18813, v0.9.0 image); CUDA forward compatibility (cuda-compat) only exists for
        # data-center GPUs, never GeForce (docs.nvidia.com/deploy/cuda-compatibility/forward-compatibility.html).
        out.error(
            "nvidia_driver_version",
            f"vllm_image with vLLM {v} is built on CUDA {_fmt(need)}, but nvidia_driver_version {driver_version} "
            f"runs CUDA {_fmt(driver_cuda)} at most{_compat_note(need, brands)}: the container would stop with "
            f"'unsatisfied condition: cuda>={_fmt(need)}'. Raise nvidia_driver_version or pick an older vllm_image."
        )
    if min_cc is None:
        out.warnings.append(f"compute capability of {names} unknown (no driver yet): GPU checks skipped")
        return out

    if quantization == "awq" and min_cc >= MARLIN_MIN_CC and release.awq_flag_forces_gemm:
        out.warnings.append(f"vllm_quantization=awq selects the slow AWQ GEMM kernel in vLLM {v} on "
                            "CC >= 8.0; \"auto\" lets vLLM use awq_marlin")

    if min_cc < release.image_min_cc:
        out.error(
            "vllm_image",
            f"vllm_image with vLLM {v} (CUDA {_fmt(need)}) has no kernels for compute capability {min_cc} "
            f"({names}); it needs >= {release.image_min_cc}: pick an older vllm_image"
        )
    if release.v1_min_cc is not None and min_cc < release.v1_min_cc:
        if release.v0_fallback:
            out.warnings.append(
                f"vLLM {v}'s V1 engine needs compute capability >= {release.v1_min_cc}; {names} ({min_cc}) "
                "falls back to the V0 engine"
            )
        else:
            out.error(
                "vllm_image",
                f"vllm_image with vLLM {v} runs only the V1 engine, which needs compute capability >= "
                f"{release.v1_min_cc}; {names} has {min_cc}: pick another vllm_image"
            )

    quant = quantization or ""
    if quant.startswith("awq") and min_cc < AWQ_MIN_CC:
        out.error(
            "vllm_quantization",
            f"AWQ checkpoints need compute capability >= {AWQ_MIN_CC}; {names} has {min_cc} "
            "(vllm_quantization cannot fix this: serve an unquantized model or use other GPUs)"
        )
    elif quant == "awq_marlin" and min_cc < MARLIN_MIN_CC:
        out.error(
            "vllm_quantization",
            f"vllm_quantization=awq_marlin needs compute capability >= {MARLIN_MIN_CC}; {names} has {min_cc}: "
            "use 'awq' or 'auto'"
        )

    if dtype == "bfloat16" and min_cc < BF16_MIN_CC:
        out.error(
            "vllm_dtype",
            f"vllm_dtype=bfloat16 needs compute capability >= {BF16_MIN_CC}; {names} has {min_cc}: "
            "use 'half' or 'auto'"
        )
    if dtype == "bfloat16" and quant == "awq" and not release.awq_upgraded:
        # awq.py AWQConfig.get_supported_act_dtypes() == [torch.half] until AutoAWQConfig (0.24.0) [W]
        out.error(
            "vllm_dtype",
            f"vllm_dtype=bfloat16 with vllm_quantization=awq fails in vLLM {v} (its AWQ GEMM kernel takes "
            "float16 only): use vllm_dtype='half', or vllm_quantization='auto' on CC >= 8.0"
        )

    fp8_kv = kv_cache_dtype in _FP8_KV
    on_sm90 = any(g.compute_capability[0] == 9 for g in gpus)
    if fp8_kv and dtype in _FP16 and on_sm90:
        if release.fp8_kv_fp16_fails:
            out.error(
                "vllm_kv_cache_dtype",
                f"vllm_kv_cache_dtype={kv_cache_dtype} with vllm_dtype={dtype} fails at engine start on "
                f"{names} in vLLM {v} ('For FP8 input, output must have dtype BF16'): set "
                "vllm_dtype='bfloat16' or vllm_kv_cache_dtype='auto'"
            )
        elif release.fp8_kv_fp16_fails is None:
            out.warnings.append(
                f"vllm_kv_cache_dtype={kv_cache_dtype} with vllm_dtype={dtype} on {names}: vLLM 0.26.0 refuses "
                f"this ('For FP8 input, output must have dtype BF16'); untested for {v} - prefer bfloat16"
            )
    return out
