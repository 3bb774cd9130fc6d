"""The KV-cache model against vLLM's own start-up figures, and its shape and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpu_llm.plan.capacity import estimate
from gpu_llm.plan.types import GPU

FIXTURES = sorted((Path(__file__).parent.parent / "fixtures" / "vllm_logs").glob("*.json"))
H200 = GPU(index=0, name="NVIDIA H200", memory_mib=143771, compute_capability=(9, 0))
L4 = GPU(index=0, name="NVIDIA L4", memory_mib=23034, compute_capability=(8, 9))
T4 = GPU(index=0, name="Tesla T4", memory_mib=15360, compute_capability=(7, 5))
BASE = dict(gpu_memory_utilization=0.93, max_num_batched_tokens=8192, max_num_seqs=256, block_size=16,
            max_model_len=32768)


def _run(point: dict):
    gpu = point["gpu"]
    gpus = [GPU(index=i, name=gpu["name"], memory_mib=gpu["memory_mib"],
                compute_capability=tuple(gpu["compute_capability"])) for i in range(gpu["count"])]
    flags = dict(point["flags"])
    return estimate(gpus, flags.pop("tensor_parallel_size"), **flags)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_calibration_point_within_tolerance(path: Path) -> None:
    point = json.loads(path.read_text())
    cap = _run(point)
    expected, tol = point["expected"], point["tolerance_pct"] / 100
    assert cap.kv_cache_tokens == pytest.approx(expected["kv_tokens"], rel=tol)
    assert cap.kv_cache_gib_per_gpu == pytest.approx(expected["kv_gib"], rel=tol)
    assert cap.max_concurrency == pytest.approx(expected["max_concurrency"], rel=tol)


def test_fixtures_name_their_source() -> None:
    assert len(FIXTURES) >= 5
    for path in FIXTURES:
        point = json.loads(path.read_text())
        assert point["source"] and point["quoted"], path.name


def test_tokens_and_concurrency_follow_vllm_block_arithmetic() -> None:
    cap = estimate([H200], 1, **BASE)
    assert cap.kv_cache_tokens % BASE["block_size"] == 0
    assert cap.max_concurrency == pytest.approx(cap.kv_cache_tokens / BASE["max_model_len"])


def test_max_model_len_not_a_block_multiple_counts_whole_blocks_per_request() -> None:
    cap = estimate([H200], 1, **{**BASE, "max_model_len": 32760})
    blocks = cap.kv_cache_tokens * 2048 // 32760  # concurrency = blocks / ceil(32760 / 16)
    assert cap.max_concurrency == pytest.approx(blocks / 2048, rel=1e-4)
    assert cap.kv_cache_tokens < blocks * 16


def test_more_utilization_gives_more_kv() -> None:
    low = estimate([H200], 1, **{**BASE, "gpu_memory_utilization": 0.90})
    high = estimate([H200], 1, **{**BASE, "gpu_memory_utilization": 0.95})
    assert high.kv_cache_tokens > low.kv_cache_tokens
    assert high.kv_cache_gib_per_gpu - low.kv_cache_gib_per_gpu == pytest.approx(0.05 * high.usable_gib_per_gpu / 0.95)


def test_more_batched_tokens_gives_less_kv() -> None:
    sizes = [8192, 16384, 32768]
    caps = [estimate([H200], 1, **{**BASE, "max_num_batched_tokens": n}) for n in sizes]
    assert caps[0].kv_cache_tokens > caps[1].kv_cache_tokens > caps[2].kv_cache_tokens
    assert caps[0].activation_gib_per_gpu < caps[1].activation_gib_per_gpu < caps[2].activation_gib_per_gpu


def test_fp8_kv_doubles_tokens() -> None:
    fp16 = estimate([H200], 1, **BASE)
    fp8 = estimate([H200], 1, **BASE, kv_cache_dtype="fp8")
    assert fp8.kv_cache_tokens == pytest.approx(2 * fp16.kv_cache_tokens, abs=BASE["block_size"])
    assert fp8.max_concurrency == pytest.approx(2 * fp16.max_concurrency, rel=1e-3)


def test_tensor_parallel_splits_weights_but_not_replicated_parts() -> None:
    one = estimate([H200], 1, **BASE)
    four = estimate([H200] * 4, 4, **BASE)
    assert one.weights_gib_per_gpu / 4 < four.weights_gib_per_gpu < one.weights_gib_per_gpu / 4 + 0.01
    assert four.activation_gib_per_gpu < one.activation_gib_per_gpu
    # Per GPU each token's KV is a quarter as big and there is more room: far more tokens for the group.
    assert four.kv_cache_tokens > 4 * one.kv_cache_tokens


def test_smallest_gpu_of_a_mixed_group_decides() -> None:
    small = GPU(index=1, name="NVIDIA H100 80GB HBM3", memory_mib=81559, compute_capability=(9, 0))
    mixed = estimate([H200, small], 2, **BASE)
    assert mixed.kv_cache_tokens == estimate([small, small], 2, **BASE).kv_cache_tokens


def test_graphs_in_budget_take_graph_memory_from_kv() -> None:
    outside = estimate([H200], 1, **BASE)
    inside = estimate([H200], 1, **BASE, graphs_in_budget=True)
    eager = estimate([H200], 1, **BASE, cuda_graphs=False)
    graphs = outside.overhead_gib_per_gpu - eager.overhead_gib_per_gpu
    assert graphs > 0.5
    assert outside.kv_cache_gib_per_gpu - inside.kv_cache_gib_per_gpu == pytest.approx(graphs)
    assert eager.kv_cache_tokens == outside.kv_cache_tokens


def test_graphs_that_overflow_the_unbudgeted_memory_are_noted() -> None:
    assert estimate([H200], 1, **BASE).notes == []
    tight = estimate([H200], 1, **{**BASE, "gpu_memory_utilization": 0.995, "max_num_seqs": 1024})
    assert any("CUDA graphs" in note for note in tight.notes)


def test_weights_that_do_not_fit_are_refused_with_numbers() -> None:
    with pytest.raises(ValueError, match=r"does not fit Tesla T4 \(GPU 0\) at TP1: .* weights 18\.59 ") as err:
        estimate([T4], 1, **BASE)
    assert "gpu_memory_utilization 0.93" in str(err.value)


def test_context_that_does_not_fit_one_request_is_refused_with_numbers() -> None:
    two_l4 = [L4, L4]
    with pytest.raises(ValueError, match=r"vllm_max_model_len=40960 .* needs 5\.00 GiB per GPU but \d+\.\d\d GiB"):
        estimate(two_l4, 2, **{**BASE, "gpu_memory_utilization": 0.70, "max_model_len": 40960})
    # The same pair holds the context once the KV cache is fp8.
    fits = estimate(two_l4, 2, **{**BASE, "gpu_memory_utilization": 0.70, "max_model_len": 40960},
                    kv_cache_dtype="fp8")
    assert fits.max_concurrency >= 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gpu_memory_utilization": 1.2}, "vllm_gpu_memory_utilization=1.2"),
        ({"kv_cache_dtype": "int4"}, "vllm_kv_cache_dtype='int4'"),
        ({"block_size": 0}, "vllm_block_size=0"),
        ({"max_model_len": 131072}, "vllm_max_model_len=131072: .* at most 40960"),
    ],
)
def test_bad_settings_are_named(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        estimate([H200], 1, **{**BASE, **change})


def test_tensor_parallel_size_must_fit_gpus_and_heads() -> None:
    with pytest.raises(ValueError, match="vllm_tensor_parallel_size=2: must be between 1 and the 1 GPU"):
        estimate([H200], 2, **BASE)
    with pytest.raises(ValueError, match="vllm_tensor_parallel_size=3: must divide"):
        estimate([H200] * 3, 3, **BASE)
