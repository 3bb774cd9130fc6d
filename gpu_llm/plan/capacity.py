"""Predict the KV-cache figures vLLM prints at start-up, from GPU sizes and serving flags."""

from __future__ import annotations

import math

from gpu_llm.plan.types import GPU, QWEN3_32B_AWQ, Capacity, ModelSpec

GIB = 1 << 30
MIB = 1 << 20

# nvidia-smi memory.total minus what CUDA reports as total is the driver's "Reserved" memory
# (nvidia-smi -q, FB Memory Usage). Measured on an H200 (driver 580.159.04): 143771 - 616 = 143155 MiB,
# exactly torch.cuda.mem_get_info()'s total (150109880320 bytes). The 22 GB 2080 Ti log in
# tests/fixtures/vllm_logs/ implies ~523 MiB; 616 is used for every GPU (GPU carries no reserved field).
RESERVED_MIB = 616

# Memory outside torch's allocator (CUDA context, cuBLAS/NCCL workspaces): vLLM 0.26 on an H200 at TP1
# reported 0.22 GiB; vLLM 0.8.5 on 4x 2080 Ti reported 0.18-0.20 GiB per rank.
NON_TORCH_GIB = 0.22

# Peak activation of vLLM's profiling forward pass over max_num_batched_tokens tokens, per token and GPU:
# fp16 buffers of MLP_BUFFERS x intermediate/TP (gate_up output + SiLU output) plus HIDDEN_BUFFERS x hidden
# (residual, norms, attention I/O). Solved from two measured peaks at 32768 tokens: 5.87 GiB at TP1
# (vLLM 0.26, H200) and 2.74 GiB at TP4 (vLLM 0.8.5, 2080 Ti); it predicts 1.47 GiB at 8192 tokens
# where vLLM 0.26 measured 1.45-1.61 GiB.
MLP_BUFFERS = 2.671
HIDDEN_BUFFERS = 5.429
ACTIVATION_BYTES = 2

# The profiling sampler pass over max_num_seqs rows of fp32 logits (sort + softmax copies) sets the
# peak when batched tokens are few and sequences many: 1.53 GiB at 4096 tokens with vLLM 0.26's default
# of 1024 sequences on a >= 70 GiB GPU, i.e. 2.64 copies of the [seqs, vocab] fp32 logits.
SAMPLER_COPIES = 2.64
LOGIT_BYTES = 4

# CUDA graph pool per GPU ~ GRAPH_GIB_PER_SIZE x captured sizes + GRAPH_GIB_PER_TOKEN x largest size,
# solved from vLLM 0.26 on an H200: 0.41 GiB (64 seqs: 19 sizes up to 128) and 1.37 GiB (256 seqs:
# 51 sizes up to 512). The 1024-seq fp16 run measured 1.98 GiB where this gives 1.37 (approximate).
GRAPH_GIB_PER_SIZE = 0.0108
GRAPH_GIB_PER_TOKEN = 0.0016
MAX_CAPTURE_SIZE = 512

KV_DTYPE_BYTES = {"auto": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}


def weight_bytes(model: ModelSpec) -> tuple[float, float]:
    """(bytes split across TP ranks, bytes replicated on every rank) of the model as vLLM loads it.

    Derived from the config: AWQ linear layers hold quant_bits per weight plus an fp16 scale and a
    packed quant_bits zero per group; embeddings and lm_head are fp16 and vocab-parallel (split);
    RMSNorm weights (per layer: 2 x hidden + q/k norms of head_dim, plus the final norm) are replicated.
    What vLLM loads beyond that (kernel repacking: 18.59 GiB loaded vs 18.00 derived) is split too.
    """
    h, i = model.hidden_size, model.intermediate_size
    q = model.num_attention_heads * model.head_dim
    kv = model.num_kv_heads * model.head_dim
    linear_params = model.num_layers * (h * (q + 2 * kv) + q * h + 3 * h * i)
    bytes_per_param = model.quant_bits / 8 + (2 + model.quant_bits / 8) / model.quant_group_size
    embeddings = 2 * model.vocab_size * h * 2
    replicated = (model.num_layers * (2 * h + 2 * model.head_dim) + h) * 2
    derived = linear_params * bytes_per_param + embeddings + replicated
    loaded = max(model.weights_gib * GIB, derived)
    return loaded - replicated, replicated


def activation_bytes(model: ModelSpec, tp: int, max_num_batched_tokens: int, max_num_seqs: int) -> float:
    """Peak torch activation vLLM's profiling run reports on one GPU."""
    per_token = ACTIVATION_BYTES * (
        MLP_BUFFERS * model.intermediate_size / tp + HIDDEN_BUFFERS * model.hidden_size
    )
    sampler = SAMPLER_COPIES * min(max_num_seqs, max_num_batched_tokens) * model.vocab_size * LOGIT_BYTES
    return max(per_token * max_num_batched_tokens, sampler)


def capture_sizes(max_num_seqs: int, max_num_batched_tokens: int) -> list[int]:
    """Batch sizes vLLM captures CUDA graphs for: 1, 2, 4, then steps of 8 to 256 and of 16 beyond."""
    largest = min(2 * max_num_seqs, MAX_CAPTURE_SIZE, max_num_batched_tokens)
    sizes = [1, 2, 4, *range(8, 256, 8), *range(256, MAX_CAPTURE_SIZE + 1, 16)]
    return [s for s in sizes if s <= largest]


def graph_bytes(max_num_seqs: int, max_num_batched_tokens: int) -> float:
    """CUDA graph memory per GPU (outside gpu_memory_utilization in vLLM 0.26)."""
    sizes = capture_sizes(max_num_seqs, max_num_batched_tokens)
    return (GRAPH_GIB_PER_SIZE * len(sizes) + GRAPH_GIB_PER_TOKEN * max(sizes)) * GIB


def kv_bytes_per_token(model: ModelSpec, tp: int, kv_cache_dtype: str) -> int:
    """K and V bytes one token takes on one GPU (KV heads split across TP, replicated below one each)."""
    heads = max(1, model.num_kv_heads // tp)
    return 2 * model.num_layers * heads * model.head_dim * KV_DTYPE_BYTES[kv_cache_dtype]


def cuda_total_bytes(gpu: GPU) -> int:
    """What CUDA (and so vLLM) sees as the GPU's total memory."""
    return (gpu.memory_mib - RESERVED_MIB) * MIB


def _check_inputs(
    gpus: list[GPU], tp: int, util: float, block_size: int, max_model_len: int, kv_cache_dtype: str,
    model: ModelSpec, max_num_batched_tokens: int, max_num_seqs: int,
) -> None:
    if not 0 < util <= 1:
        raise ValueError(f"vllm_gpu_memory_utilization={util!r}: must be > 0 and <= 1")
    if tp < 1 or tp > len(gpus):
        raise ValueError(f"vllm_tensor_parallel_size={tp!r}: must be between 1 and the {len(gpus)} GPU(s) given")
    if model.num_attention_heads % tp:
        raise ValueError(
            f"vllm_tensor_parallel_size={tp}: must divide {model.name}'s {model.num_attention_heads} attention heads"
        )
    if kv_cache_dtype not in KV_DTYPE_BYTES:
        raise ValueError(f"vllm_kv_cache_dtype={kv_cache_dtype!r}: allowed are {', '.join(KV_DTYPE_BYTES)}")
    for key, value in (("vllm_block_size", block_size), ("vllm_max_model_len", max_model_len),
                       ("vllm_max_num_batched_tokens", max_num_batched_tokens), ("vllm_max_num_seqs", max_num_seqs)):
        if value < 1:
            raise ValueError(f"{key}={value!r}: must be a positive integer")
    if max_model_len > model.max_position_embeddings:
        raise ValueError(
            f"vllm_max_model_len={max_model_len}: {model.name} supports at most "
            f"{model.max_position_embeddings} tokens without rope scaling"
        )


def estimate(
    gpus: list[GPU],
    tensor_parallel_size: int,
    *,
    gpu_memory_utilization: float,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    block_size: int,
    max_model_len: int,
    kv_cache_dtype: str = "auto",
    model: ModelSpec = QWEN3_32B_AWQ,
    cuda_graphs: bool = True,
    graphs_in_budget: bool = False,
    require_one_sequence: bool = True,
) -> Capacity:
    """KV-cache capacity vLLM will report for one TP group on gpus[:tensor_parallel_size].

    KV per GPU = CUDA total x util - (weights + peak activation + non-torch memory), as vLLM 0.8-0.26
    compute it; graphs_in_budget also subtracts CUDA graph memory (releases that profile graphs into
    the budget). Blocks and tokens mirror vllm/v1/core/kv_cache_utils.py: blocks = KV bytes // (page
    bytes x layers), the smallest over the ranks; concurrency = blocks / cdiv(max_model_len, block_size);
    tokens = int(concurrency x max_model_len) (= blocks x block_size when block_size divides
    max_model_len). Raises ValueError, with the numbers, where vLLM would refuse to start (require_one_sequence
    False: only where the weights do not fit; used to size the KV cache before max_model_len is known).
    """
    tp = tensor_parallel_size
    _check_inputs(gpus, tp, gpu_memory_utilization, block_size, max_model_len, kv_cache_dtype, model,
                  max_num_batched_tokens, max_num_seqs)
    sharded, replicated = weight_bytes(model)
    weights = sharded / tp + replicated
    activation = activation_bytes(model, tp, max_num_batched_tokens, max_num_seqs)
    non_torch = NON_TORCH_GIB * GIB
    graphs = graph_bytes(max_num_seqs, max_num_batched_tokens) if cuda_graphs else 0.0
    non_kv = weights + activation + non_torch + (graphs if graphs_in_budget else 0.0)
    page_bytes = block_size * kv_bytes_per_token(model, tp, kv_cache_dtype)  # one block, all layers

    smallest = min(gpus[:tp], key=cuda_total_bytes)
    total = cuda_total_bytes(smallest)
    usable = total * gpu_memory_utilization
    kv = usable - non_kv
    if kv <= 0:
        raise ValueError(
            f"{model.name} does not fit {smallest.name} (GPU {smallest.index}) at TP{tp}: "
            f"{total / GIB:.2f} GiB x gpu_memory_utilization {gpu_memory_utilization} = {usable / GIB:.2f} GiB, "
            f"but weights {weights / GIB:.2f} + activation {activation / GIB:.2f} + non-torch "
            f"{non_torch / GIB:.2f} GiB need {non_kv / GIB:.2f} GiB; raise the utilization or the TP size, "
            f"or lower vllm_max_num_batched_tokens ({max_num_batched_tokens})"
        )
    blocks = int(kv // page_bytes)
    blocks_per_request = math.ceil(max_model_len / block_size)
    # vLLM keeps one null block out of the pool before it checks that one full request fits.
    if require_one_sequence and blocks - 1 < blocks_per_request:
        need = blocks_per_request * page_bytes
        raise ValueError(
            f"vllm_max_model_len={max_model_len} does not fit the KV cache at TP{tp}: one request needs "
            f"{need / GIB:.2f} GiB per GPU but {kv / GIB:.2f} GiB is left ({usable / GIB:.2f} GiB usable - "
            f"{non_kv / GIB:.2f} GiB weights/activation/overhead), room for "
            f"{max(blocks - 1, 0) * block_size} tokens; lower vllm_max_model_len, raise the utilization "
            f"or TP size, or use vllm_kv_cache_dtype fp8"
        )
    concurrency = blocks / blocks_per_request
    notes = []
    if usable + (0.0 if graphs_in_budget else graphs) > total:
        notes.append(
            f"CUDA graphs (~{graphs / GIB:.2f} GiB) sit outside gpu_memory_utilization {gpu_memory_utilization} "
            f"and may not fit the {(total - usable) / GIB:.2f} GiB left on {smallest.name}"
        )
    return Capacity(
        weights_gib_per_gpu=weights / GIB,
        activation_gib_per_gpu=activation / GIB,
        overhead_gib_per_gpu=(non_torch + graphs) / GIB,
        usable_gib_per_gpu=usable / GIB,
        kv_cache_gib_per_gpu=kv / GIB,
        kv_cache_tokens=int(concurrency * max_model_len),
        max_concurrency=concurrency,
        notes=notes,
    )
