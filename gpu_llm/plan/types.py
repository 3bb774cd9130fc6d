"""Plain data the planner works on: GPUs (from facts or the CLI) and the model's shape."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GPU:
    """One GPU as nvidia-smi (or the PCI bus, before a driver exists) reports it."""

    index: int
    name: str
    memory_mib: int  # nvidia-smi memory.total, MiB
    compute_capability: tuple[int, int]  # (9, 0) for Hopper; (0, 0) when unknown (no driver yet)
    driver_version: str | None = None  # "570.153.02"; None before a driver is loaded
    pci_bus_id: str | None = None  # "00000000:00:06.0"
    uuid: str | None = None
    interconnect: str | None = None  # "nvlink" | "pcie" | None (unknown)

    @property
    def cc(self) -> float:
        return self.compute_capability[0] + self.compute_capability[1] / 10


@dataclass(frozen=True)
class ModelSpec:
    """Shape of the served model, from its config.json (Qwen/Qwen3-32B-AWQ)."""

    name: str
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int  # longest context without rope scaling
    quant_bits: int
    quant_group_size: int
    weights_gib: float  # weights as loaded by vLLM (GiB), measured
    disk_gib: float  # snapshot size on disk (GiB)


# Qwen/Qwen3-32B-AWQ config.json (huggingface.co/Qwen/Qwen3-32B-AWQ): 64 layers, 64 q heads, 8 kv heads,
# head_dim 128, hidden 5120, intermediate 25600, vocab 151936, max_position_embeddings 40960,
# AWQ 4-bit, group 128. weights_gib: vLLM 0.26 "Model loading took 18.59 GiB" on an H200
# (tests/fixtures/vllm_logs/h200_tp1_u093_b8192_fp16.json). disk: 19.0 GiB (model-0000[1-4]-of-00004.safetensors).
QWEN3_32B_AWQ = ModelSpec(
    name="Qwen/Qwen3-32B-AWQ",
    num_layers=64,
    num_attention_heads=64,
    num_kv_heads=8,
    head_dim=128,
    hidden_size=5120,
    intermediate_size=25600,
    vocab_size=151936,
    max_position_embeddings=40960,
    quant_bits=4,
    quant_group_size=128,
    weights_gib=18.59,
    disk_gib=19.0,
)


@dataclass
class Capacity:
    """KV-cache capacity of one tensor-parallel group, in vLLM's own terms."""

    weights_gib_per_gpu: float
    activation_gib_per_gpu: float
    overhead_gib_per_gpu: float  # non-torch memory + CUDA graphs
    usable_gib_per_gpu: float  # what CUDA can allocate x gpu_memory_utilization
    kv_cache_gib_per_gpu: float
    kv_cache_tokens: int  # GPU blocks x block size, for the whole TP group
    max_concurrency: float  # kv_cache_tokens / max_model_len
    notes: list[str] = field(default_factory=list)
