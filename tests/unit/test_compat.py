"""gpu_llm.plan.compat.check: each rule fires on its bad combination and stays quiet on a good one."""

from gpu_llm.plan import compat
from gpu_llm.plan.types import GPU
from gpu_llm.plan.versions import NEWEST, release

H200 = GPU(0, "NVIDIA H200", 143771, (9, 0), "580.159.04")
A100 = GPU(0, "NVIDIA A100-SXM4-80GB", 81920, (8, 0), "570.153.02")
T4 = GPU(0, "Tesla T4", 15360, (7, 5), "570.153.02")
TI2080 = GPU(0, "NVIDIA GeForce RTX 2080 Ti", 22528, (7, 5), "570.153.02")
V100 = GPU(0, "Tesla V100-SXM2-32GB", 32768, (7, 0), "570.153.02")
P100 = GPU(0, "Tesla P100-PCIE-16GB", 16384, (6, 0), "570.153.02")


def run(ver, gpus, driver="580.159.04", dtype="bfloat16", kv="auto", quant=None, **kw):
    rel = release(ver) if isinstance(ver, str) else ver
    return compat.check(rel, gpus, driver_version=driver, dtype=dtype, kv_cache_dtype=kv, quantization=quant, **kw)


def test_good_combo_h200_driver580_newest():
    res = run(NEWEST, [H200, H200], kv="fp8", quant="awq")
    assert res.errors == [] and res.warnings == []


def test_image_cuda_newer_than_driver():
    # CUDA 12.9 image on driver 570 (CUDA 12.8): refused on a GeForce, whose brand no compat clause names ...
    res = run("0.11.1", [TI2080], driver="570.153.02", dtype="half", quant="awq")
    assert len(res.errors) == 1
    msg = res.errors[0]
    assert "12.9" in msg and "12.8" in msg and "nvidia_driver_version" in msg and "vllm_image" in msg
    assert "geforce" in msg
    assert run("0.11.0", [A100], driver="570.153.02").errors == []
    # ... and started on a data-center card through its brand=nvidia,driver>=570,driver<571 clause
    ok = run("0.11.1", [A100], driver="570.153.02")
    assert ok.errors == [] and any("NVIDIA_REQUIRE_CUDA" in w for w in ok.warnings)
    # a branch the clauses do not name (575 runs 12.9 itself; 560 is listed, 555 is not) and CUDA 13 images
    assert run("0.11.1", [A100], driver="560.35.03").errors == []
    assert run("0.11.1", [A100], driver="555.58.02").errors
    assert run("0.20.0", [A100], driver="570.153.02").errors  # CUDA 13.0 image: no clause for 570


def test_image_cuda_suffix_overrides_default_build():
    assert run("0.20.0", [A100], driver="575.57.08").errors
    assert run("0.20.0", [A100], driver="575.57.08", image_cuda=(12, 9)).errors == []


def test_bad_driver_string_is_an_error():
    res = run("0.10.1", [A100], driver="latest")
    assert any("nvidia_driver_version" in e for e in res.errors)


def test_awq_needs_turing():
    res = run("0.10.1", [V100], driver="570.153.02", dtype="half", quant="awq")
    assert any("7.5" in e and "7.0" in e for e in res.errors)
    assert run("0.10.1", [T4], driver="570.153.02", dtype="half", quant="awq").errors == []


def test_awq_marlin_needs_ampere():
    res = run("0.10.1", [T4], driver="570.153.02", dtype="half", quant="awq_marlin")
    assert any("vllm_quantization=awq_marlin" in e for e in res.errors)


def test_v1_floor_falls_back_to_v0_where_v0_exists():
    res = run("0.10.1", [TI2080], driver="570.153.02", dtype="half", quant="awq")
    assert res.errors == [] and any("V0" in w for w in res.warnings)
    assert run("0.11.0", [TI2080], driver="570.153.02", dtype="half", quant="awq").warnings == []


def test_v1_only_release_below_floor_is_an_error():
    # no shipped row is V1-only with a CC floor; the rule still has to hold for one that is
    import dataclasses

    rel = dataclasses.replace(release("0.10.1"), v0_fallback=False)
    res = run(rel, [TI2080], driver="570.153.02", dtype="half", quant="awq")
    assert any("V1 engine" in e and "8.0" in e and "7.5" in e for e in res.errors)


def test_image_without_kernels_for_old_gpu():
    res = run("0.20.0", [V100], dtype="half")
    assert any("7.0" in e and "7.5" in e for e in res.errors)
    assert run("0.8.5", [P100], driver="570.153.02", dtype="half").errors


def test_bf16_needs_ampere():
    res = run("0.11.0", [T4], driver="570.153.02", dtype="bfloat16", quant="awq")
    assert any("vllm_dtype=bfloat16" in e and "8.0" in e for e in res.errors)


def test_bf16_with_forced_awq_gemm_before_autoawq():
    assert any("float16 only" in e for e in run("0.23.0", [H200], dtype="bfloat16", quant="awq").errors)
    assert run("0.24.0", [H200], dtype="bfloat16", quant="awq").errors == []


def test_fp8_kv_with_fp16_on_hopper():
    res = run("0.26.0", [H200], dtype="half", kv="fp8")
    assert any("vllm_kv_cache_dtype=fp8" in e and "vllm_dtype=half" in e and "0.26.0" in e for e in res.errors)
    assert run("0.26.0", [H200], dtype="bfloat16", kv="fp8").errors == []
    assert run("0.26.0", [A100], driver="580.159.04", dtype="half", kv="fp8").errors == []
    older = run("0.20.0", [H200], dtype="half", kv="fp8")
    assert older.errors == [] and any("untested" in w for w in older.warnings)


def test_unknown_compute_capability_only_warns():
    nodrv = GPU(0, "NVIDIA H200", 143771, (0, 0), None)
    res = run(NEWEST, [nodrv])
    assert res.errors == [] and any("unknown" in w for w in res.warnings)


def test_forced_awq_warns_only_where_it_selects_the_gemm_kernel():
    res = run("0.10.1", [A100], driver="570.153.02", dtype="half", quant="awq")
    assert res.errors == [] and any("slow AWQ GEMM" in w and "0.10.1" in w for w in res.warnings)
    def gemm(res):
        return [w for w in res.warnings if "GEMM" in w]

    assert not gemm(run("0.10.1", [T4], driver="570.153.02", dtype="half", quant="awq"))  # GEMM is all there is
    assert not gemm(run("0.26.0", [H200], dtype="half", quant="awq"))  # AutoAWQ picks the fast kernel itself
    assert not gemm(run("0.10.1", [A100], driver="570.153.02", dtype="half", quant="awq_marlin"))


def test_auto_choices_follow_the_compute_capability_rules():
    assert compat.auto_dtype(7.5, "auto") == "half" and compat.auto_dtype(7.5, "fp8") == "half"
    assert compat.auto_dtype(compat.BF16_MIN_CC, "auto") is None  # vLLM's own (float16 for AWQ)
    assert compat.auto_dtype(9.0, "fp8") == "bfloat16"
    assert compat.auto_quantization(7.5) == "awq" and compat.auto_quantization(7.0) == "awq"  # check() refuses 7.0
    assert compat.auto_quantization(compat.MARLIN_MIN_CC) is None  # vLLM upgrades the checkpoint to awq_marlin
    # what auto picks, check() accepts
    for gpu in (T4, A100, H200):
        driver = "580.159.04" if gpu is H200 else "570.153.02"
        dtype = compat.auto_dtype(gpu.cc, "auto") or "float16"
        quant = compat.auto_quantization(gpu.cc) or "awq_marlin"
        assert run("0.11.0", [gpu], driver=driver, dtype=dtype, quant=quant).errors == [], gpu.name


def test_each_error_names_the_setting_it_is_filed_under():
    results = [run("0.11.1", [TI2080], driver="570.153.02", dtype="half", quant="awq"),
               run("0.10.1", [A100], driver="latest"),
               run("0.20.0", [V100], dtype="half", quant="awq"), run("0.10.1", [T4], driver="570.153.02",
                                                                     dtype="bfloat16", quant="awq_marlin"),
               run("0.23.0", [H200], dtype="bfloat16", quant="awq"), run("0.26.0", [H200], dtype="half", kv="fp8")]
    keys = set()
    for res in results:
        assert res.errors and len(res.error_keys) == len(res.errors)
        for key, message in zip(res.error_keys, res.errors):
            assert key in message, (key, message)
            keys.add(key)
    assert keys == {"nvidia_driver_version", "vllm_image", "vllm_quantization", "vllm_dtype", "vllm_kv_cache_dtype"}
