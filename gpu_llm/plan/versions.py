"""vLLM release table (image CUDA, torch, CLI flags, engine/kernel behaviour) and NVIDIA driver -> CUDA map."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Sources, cited per fact below as [W] etc.:
# [W]  the release's PyPI wheel vllm-<ver>-cp38-abi3-manylinux1_x86_64.whl, read file by file (METADATA for
#      the torch pin; vllm/envs.py VLLM_MAIN_CUDA_VERSION; vllm/engine/arg_utils.py; vllm/platforms/cuda.py;
#      vllm/model_executor/layers/quantization/{__init__,awq,awq_marlin,auto_awq}.py; vllm/config/cache.py).
# [N]  NVIDIA CUDA Toolkit release notes, table "CUDA Toolkit and Corresponding Driver Versions"
#      (https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/index.html), Linux x86_64 minimum driver.
# [M]  measured: vLLM 0.26.0 on an H200, driver 580.159.04 (tests/fixtures/vllm_logs/h200_*, tests/fixtures/h200-host).
# [U]  not verified from a primary source: stated from memory or inferred; see the comment on the row.

# ---- NVIDIA driver -> CUDA ----------------------------------------------------------------------------------

# CUDA (major, minor) -> lowest Linux driver that runs it, GA release of that CUDA [N].
CUDA_MIN_DRIVER: dict[tuple[int, int], str] = {
    (12, 0): "525.60.13",  # [N] CUDA 12.0 GA
    (12, 1): "530.30.02",  # [N] CUDA 12.1 GA
    (12, 2): "535.54.03",  # [N] CUDA 12.2 GA
    (12, 3): "545.23.06",  # [N] CUDA 12.3 GA
    (12, 4): "550.54.14",  # [N] CUDA 12.4 GA
    (12, 5): "555.42.02",  # [N] CUDA 12.5 GA
    (12, 6): "560.28.03",  # [N] CUDA 12.6 GA
    (12, 8): "570.26",  # [N] CUDA 12.8 GA
    (12, 9): "575.51.03",  # [N] CUDA 12.9 GA
    (13, 0): "580.65.06",  # [N] CUDA 13.0 GA
    (13, 1): "590.44.01",  # [U] CUDA 13.1 GA (from memory; the stored 13.1 notes page did not show the row)
}

# Driver branch -> newest CUDA it runs (what `nvidia-smi` prints as "CUDA Version"), from CUDA_MIN_DRIVER [N];
# 565 prints 12.7, a CUDA with no toolkit release, so images top out at 12.6 there.
DRIVER_CUDA: dict[int, tuple[int, int]] = {
    525: (12, 0),
    530: (12, 1),
    535: (12, 2),
    545: (12, 3),
    550: (12, 4),
    555: (12, 5),
    560: (12, 6),
    565: (12, 7),
    570: (12, 8),
    575: (12, 9),
    580: (13, 0),  # [M] 580.159.04 reports CUDA 13.0 (tests/fixtures/h200-host nvidia-smi)
    590: (13, 1),  # [U]
}


def _driver_tuple(driver_version: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\d+(\.\d+){0,2}", driver_version or ""):
        raise ValueError(
            f"nvidia_driver_version {driver_version!r} is not a driver version; expected e.g. '570.153.02'"
        )
    return tuple(int(part) for part in driver_version.split("."))


def cuda_for_driver(driver_version: str) -> tuple[int, int]:
    """Newest CUDA (major, minor) that driver `driver_version` (e.g. "570.153.02") runs, per NVIDIA's table."""
    have = _driver_tuple(driver_version)
    runnable = [cuda for cuda, floor in CUDA_MIN_DRIVER.items() if have >= _driver_tuple(floor)]
    if not runnable:
        raise ValueError(
            f"nvidia_driver_version {driver_version!r} is older than {CUDA_MIN_DRIVER[(12, 0)]}, the first driver "
            "of CUDA 12; every vLLM image in the table needs CUDA 12.4 or newer"
        )
    return max(runnable)


# ---- vLLM releases ------------------------------------------------------------------------------------------

# Every --flag that vllm/engine/arg_utils.py and vllm/entrypoints/openai/cli_args.py register in 0.8.5
# (add_argument calls; --no-X where the action is BooleanOptionalAction), read from the PyPI wheel
# vllm-0.8.5-cp38-abi3-manylinux1_x86_64.whl.
_BASE_FLAGS = frozenset(
    (
        "--additional-config --allow-credentials --allowed-headers --allowed-local-media-path "
        "--allowed-methods --allowed-origins --api-key --block-size --calculate-kv-scales "
        "--chat-template --chat-template-content-format --code-revision --collect-detailed-traces "
        "--compilation-config --config --config-format --cpu-offload-gb --data-parallel-size "
        "--device --disable-async-output-proc --disable-cascade-attn --disable-chunked-mm-input "
        "--disable-custom-all-reduce --disable-fastapi-docs --disable-frontend-multiprocessing "
        "--disable-log-requests --disable-log-stats --disable-mm-preprocessor-cache "
        "--disable-sliding-window --disable-uvicorn-access-log --distributed-executor-backend "
        "--download-dir --dtype --enable-auto-tool-choice --enable-chunked-prefill "
        "--enable-expert-parallel --enable-lora --enable-lora-bias --enable-prefix-caching "
        "--enable-prompt-adapter --enable-prompt-tokens-details --enable-reasoning "
        "--enable-request-id-headers --enable-server-load-tracking --enable-sleep-mode "
        "--enable-ssl-refresh --enforce-eager --fully-sharded-loras --generation-config "
        "--gpu-memory-utilization --guided-decoding-backend --hf-config-path --hf-overrides "
        "--hf-token --host --ignore-patterns --kv-cache-dtype --kv-transfer-config "
        "--limit-mm-per-prompt --load-format --logits-processor-pattern "
        "--long-lora-scaling-factors --long-prefill-token-threshold --lora-dtype "
        "--lora-extra-vocab-size --lora-modules --max-cpu-loras --max-log-len --max-logprobs "
        "--max-long-partial-prefills --max-lora-rank --max-loras --max-model-len "
        "--max-num-batched-tokens --max-num-partial-prefills --max-num-seqs "
        "--max-parallel-loading-workers --max-prompt-adapter-token --max-prompt-adapters "
        "--max-seq-len-to-capture --middleware --mm-processor-kwargs --model --model-impl "
        "--model-loader-extra-config --multi-step-stream-outputs --no-calculate-kv-scales "
        "--no-disable-chunked-mm-input --no-disable-custom-all-reduce --no-enable-chunked-prefill "
        "--no-enable-expert-parallel --no-enable-lora --no-enable-lora-bias "
        "--no-enable-prefix-caching --no-enable-prompt-adapter --no-fully-sharded-loras "
        "--no-multi-step-stream-outputs --no-ray-workers-use-nsight --no-use-tqdm-on-load "
        "--num-gpu-blocks-override --num-lookahead-slots --num-scheduler-steps "
        "--otlp-traces-endpoint --override-generation-config --override-neuron-config "
        "--override-pooler-config --pipeline-parallel-size --port --preemption-mode "
        "--prefix-caching-hash-algo --prompt-adapters --qlora-adapter-name-or-path --quantization "
        "--ray-workers-use-nsight --reasoning-parser --response-role --return-tokens-as-token-ids "
        "--revision --root-path --rope-scaling --rope-theta --scheduler-cls "
        "--scheduler-delay-factor --scheduling-policy --seed --served-model-name "
        "--show-hidden-metrics-for-version --skip-tokenizer-init --speculative-config "
        "--ssl-ca-certs --ssl-cert-reqs --ssl-certfile --ssl-keyfile --swap-space --task "
        "--tensor-parallel-size --tokenizer --tokenizer-mode --tokenizer-pool-extra-config "
        "--tokenizer-pool-size --tokenizer-pool-type --tokenizer-revision --tool-call-parser "
        "--tool-parser-plugin --trust-remote-code --use-tqdm-on-load --use-v2-block-manager "
        "--uvicorn-log-level --worker-cls --worker-extension-cls "
    ).split()
)

# version -> (flags added, flags removed) against the row before, same method, read from each release's
# PyPI wheel (vllm/engine/arg_utils.py, vllm/entrypoints/**/cli_args.py incl. FrontendArgs fields).
_FLAG_DELTAS: dict[str, tuple[str, str]] = {
    "0.8.5.post1": ("", ""),
    "0.9.0": (
        "--cuda-graph-sizes --data-parallel-address --data-parallel-rpc-port "
        "--data-parallel-size-local --data-parallel-start-rank --enable-prompt-embeds "
        "--guided-decoding-disable-additional-properties --guided-decoding-disable-any-whitespace "
        "--guided-decoding-disable-fallback --headless --kv-events-config "
        "--no-disable-cascade-attn --no-disable-mm-preprocessor-cache --no-disable-sliding-window "
        "--no-enable-prompt-embeds --no-enable-reasoning --no-enable-sleep-mode --no-enforce-eager "
        "--no-guided-decoding-disable-additional-properties "
        "--no-guided-decoding-disable-any-whitespace --no-guided-decoding-disable-fallback "
        "--no-skip-tokenizer-init --no-trust-remote-code --pt-load-map-location ",
        "",
    ),
    "0.9.0.1": ("", ""),
    "0.9.1": (
        "--api-server-count --data-parallel-backend --disable-hybrid-kv-cache-manager "
        "--enable-multimodal-encoder-data-parallel --log-config-file "
        "--no-disable-hybrid-kv-cache-manager --no-enable-multimodal-encoder-data-parallel ",
        "",
    ),
    "0.9.2": (
        "--data-parallel-rank --enable-eplb --enable-force-include-usage --eplb-log-balancedness "
        "--eplb-step-interval --eplb-window-size --expand-tools-even-if-tool-choice-none "
        "--media-io-kwargs --no-enable-eplb --no-eplb-log-balancedness --num-redundant-experts "
        "--override-attention-dtype ",
        "",
    ),
    "0.10.0": (
        "--async-scheduling --data-parallel-hybrid-lb --default-mm-loras "
        "--enable-tokenizer-info-endpoint --interleave-mm-strings --logprobs-mode "
        "--no-allow-credentials --no-async-scheduling --no-data-parallel-hybrid-lb "
        "--no-disable-fastapi-docs --no-disable-frontend-multiprocessing "
        "--no-disable-uvicorn-access-log --no-enable-auto-tool-choice "
        "--no-enable-force-include-usage --no-enable-prompt-tokens-details "
        "--no-enable-request-id-headers --no-enable-server-load-tracking --no-enable-ssl-refresh "
        "--no-enable-tokenizer-info-endpoint --no-interleave-mm-strings "
        "--no-return-tokens-as-token-ids ",
        "--device --enable-reasoning --expand-tools-even-if-tool-choice-none "
        "--long-lora-scaling-factors --max-prompt-adapter-token --max-prompt-adapters "
        "--no-enable-prompt-adapter --no-enable-reasoning --prompt-adapters "
        "--qlora-adapter-name-or-path --tokenizer-pool-extra-config --tokenizer-pool-size "
        "--tokenizer-pool-type --use-v2-block-manager ",
    ),
    "0.10.1": (
        "--convert --enable-log-outputs --enable-log-requests "
        "--exclude-tools-when-tool-choice-none --kv-sharing-fast-prefill --logits-processors "
        "--mamba-cache-dtype --mamba-ssm-cache-dtype --mm-processor-cache-gb "
        "--no-disable-log-requests --no-enable-log-outputs --no-enable-log-requests "
        "--no-exclude-tools-when-tool-choice-none --no-kv-sharing-fast-prefill "
        "--no-skip-mm-profiling --runner --skip-mm-profiling --tool-server --uds ",
        "--multi-step-stream-outputs --no-disable-mm-preprocessor-cache "
        "--no-multi-step-stream-outputs --num-scheduler-steps ",
    ),
    "0.10.1.1": (
        "--h11-max-header-count --h11-max-incomplete-event-size ",
        "",
    ),
    "0.10.2": (
        "--decode-context-parallel-size --eplb-config --io-processor-plugin "
        "--kv-cache-memory-bytes --log-error-stack --mm-encoder-tp-mode --no-log-error-stack "
        "--safetensors-load-strategy ",
        "--enable-prompt-adapter --no-enable-multimodal-encoder-data-parallel "
        "--override-neuron-config ",
    ),
    "0.11.0": (
        "--allowed-media-domains --dbo-decode-token-threshold --dbo-prefill-token-threshold "
        "--enable-dbo --expert-placement-strategy --mm-processor-cache-type "
        "--mm-shm-cache-max-object-size-mb --no-enable-dbo --no-trust-request-chat-template "
        "--pooler-config --structured-outputs-config --trust-request-chat-template "
        "--video-pruning-rate ",
        "--disable-async-output-proc --guided-decoding-backend "
        "--guided-decoding-disable-additional-properties --guided-decoding-disable-any-whitespace "
        "--guided-decoding-disable-fallback --max-seq-len-to-capture "
        "--no-guided-decoding-disable-additional-properties "
        "--no-guided-decoding-disable-any-whitespace --no-guided-decoding-disable-fallback "
        "--preemption-mode --scheduler-delay-factor ",
    ),
    "0.11.1": (
        "--aggregate-engine-logging --all2all-backend --cudagraph-capture-sizes "
        "--data-parallel-external-lb --dcp-kv-cache-interleave-size "
        "--disable-nccl-for-dp-synchronization --ec-transfer-config --enable-mm-embeds "
        "--kv-offloading-backend --kv-offloading-size --mamba-block-size --master-addr "
        "--master-port --max-cudagraph-capture-size --mm-encoder-attn-backend --nnodes "
        "--no-data-parallel-external-lb --no-disable-nccl-for-dp-synchronization "
        "--no-enable-mm-embeds --no-tokens-only --node-rank --reasoning-parser-plugin "
        "--stream-interval --tokens-only ",
        "--enable-lora-bias --no-enable-lora-bias --rope-scaling --rope-theta ",
    ),
    "0.11.2": ("", ""),
    "0.12.0": (
        "--cp-kv-cache-interleave-size --kv-cache-metrics --kv-cache-metrics-sample "
        "--no-kv-cache-metrics --optimization-level --prefill-context-parallel-size ",
        "--eplb-log-balancedness --eplb-step-interval --eplb-window-size --lora-extra-vocab-size "
        "--no-eplb-log-balancedness --num-lookahead-slots --num-redundant-experts "
        "--override-pooler-config ",
    ),
    "0.13.0": (
        "--attention-backend --attention-config --cudagraph-metrics "
        "--enable-layerwise-nvtx-tracing --no-cudagraph-metrics --no-enable-layerwise-nvtx-tracing "
        "--profiler-config ",
        "--cuda-graph-sizes --disable-mm-preprocessor-cache "
        "--enable-multimodal-encoder-data-parallel --task ",
    ),
    "0.14.0": (
        "--allow-deprecated-quantization --default-chat-template-kwargs --enable-log-deltas "
        "--enable-logging-iteration-details --enable-mfu-metrics --enable-offline-docs "
        "--enable-return-routed-experts --enable-tower-connector-lora "
        "--no-allow-deprecated-quantization --no-enable-log-deltas "
        "--no-enable-logging-iteration-details --no-enable-mfu-metrics --no-enable-offline-docs "
        "--no-enable-return-routed-experts --no-enable-tower-connector-lora --ubatch-size ",
        "",
    ),
    "0.14.1": ("", ""),
    "0.15.0": (
        "--mamba-cache-mode --mm-encoder-only --no-mm-encoder-only --ssl-ciphers ",
        "",
    ),
    "0.15.1": ("", ""),
    "0.16.0": (
        "--disable-access-log-for-endpoints --enable-flashinfer-autotune --kernel-config "
        "--no-enable-flashinfer-autotune --no-specialize-active-lora --specialize-active-lora "
        "--weight-transfer-config ",
        "",
    ),
    "0.17.0": (
        "--cpu-offload-params --enable-elastic-ep --fail-on-environ-validation "
        "--language-model-only --moe-backend --no-enable-elastic-ep "
        "--no-fail-on-environ-validation --no-language-model-only --no-use-gpu-for-pooling-score "
        "--offload-backend --offload-group-size --offload-num-in-group --offload-params "
        "--offload-prefetch-step --performance-mode --use-gpu-for-pooling-score ",
        "--disable-log-requests --logits-processor-pattern --no-disable-log-requests ",
    ),
    "0.17.1": ("", ""),
    "0.18.0": (
        "--dcp-comm-backend --distributed-timeout-seconds --enable-ep-weight-filter "
        "--gdn-prefill-backend --grpc --no-enable-ep-weight-filter --shutdown-timeout ",
        "--no-use-gpu-for-pooling-score --swap-space --use-gpu-for-pooling-score ",
    ),
    "0.18.1": ("", ""),
    "0.19.0": (
        "--kv-cache-dtype-skip-layers --lora-target-modules --mm-tensor-ipc "
        "--no-scheduler-reserve-full-isl --reasoning-config --renderer-num-workers "
        "--scheduler-reserve-full-isl ",
        "--disable-frontend-multiprocessing --no-disable-frontend-multiprocessing ",
    ),
    "0.19.1": ("", ""),
    "0.20.0": (
        "--enable-flash-late-interaction --enable-mamba-cache-stochastic-rounding --ir-op-priority "
        "--mamba-backend --mamba-cache-philox-rounds --no-enable-flash-late-interaction "
        "--no-enable-mamba-cache-stochastic-rounding --no-numa-bind --numa-bind --numa-bind-cpus "
        "--numa-bind-nodes ",
        "",
    ),
    "0.20.1": ("", ""),
    "0.20.2": ("", ""),
    "0.21.0": (
        "--fingerprint-mode --fingerprint-value --mm-encoder-attn-dtype "
        "--mm-encoder-fp8-scale-path --mm-encoder-fp8-scale-save-margin "
        "--mm-encoder-fp8-scale-save-path --no-hf-token --safetensors-prefetch-block-size "
        "--safetensors-prefetch-num-threads ",
        "",
    ),
    "0.22.0": (
        "--cpu-distributed-timeout-seconds --data-parallel-multi-port-external-lb "
        "--data-parallel-supervisor-port --dp-supervisor-probe-failure-threshold "
        "--dp-supervisor-probe-interval-s --dp-supervisor-probe-timeout-s --enable-cumem-allocator "
        "--enable-mixed-moe-lora-format --linear-backend --no-enable-cumem-allocator "
        "--no-enable-mixed-moe-lora-format --no-use-fp64-gumbel --quantization-config "
        "--spec-method --spec-model --spec-tokens --use-fp64-gumbel ",
        "",
    ),
    "0.22.1": ("", ""),
    "0.23.0": ("", ""),
    "0.24.0": (
        "--device-ids --diffusion-config --jit-monitor-verbose --no-jit-monitor-verbose "
        "--prefill-schedule-interval --watermark ",
        "",
    ),
    "0.25.0": (
        "--enable-per-request-metrics --jit-monitor-mode --mm-ipc-gpu-memory-gb "
        "--model-class-overrides --no-enable-per-request-metrics ",
        "",
    ),
    "0.25.1": ("", ""),
    "0.26.0": (
        "--enable-bf16x3-router-gemm --enable-moe-shared-loras --max-num-scheduled-tokens "
        "--no-enable-bf16x3-router-gemm --no-enable-moe-shared-loras --prefix-match-unit ",
        "",
    ),
    "0.27.0": (
        "--cohere-format --cohere-is-reasoning-model --enable-fault-tolerance "
        "--fault-tolerance-config --kda-prefill-backend --mamba-ssu-algorithm "
        "--mm-hasher-algorithm --no-cohere-is-reasoning-model --no-enable-fault-tolerance "
        "--no-use-replayssm --replayssm-buffer-len --use-replayssm --video-pruning-method ",
        "--max-long-partial-prefills --max-num-partial-prefills ",
    ),
    "0.27.1": ("", ""),
    "0.28.0": (
        "--ec-manager-config --mm-device-do-normalize --mm-processor-device "
        "--no-mm-device-do-normalize --no-return-sampling-mask --return-sampling-mask ",
        "--calculate-kv-scales --no-calculate-kv-scales --override-attention-dtype ",
    ),
    "0.29.0": (
        "--dcp-q-replicate --enable-batch-sharded-sampling --enable-trace-replay "
        "--max-num-queued-reqs --max-num-queued-tokens --no-dcp-q-replicate "
        "--no-enable-batch-sharded-sampling --no-enable-trace-replay "
        "--per-request-spec-decode-metrics --prefix-cache-retention-interval "
        "--sse-keep-alive-interval ",
        "",
    ),
    "0.30.0": (
        "--dp-sync-interval --elastic-ep-max-dp-size --enable-mamba-fine-grained-prefix-cache "
        "--enable-nccl-comm-suspend --enable-scale-out --engram-config --kda-decode-backend "
        "--no-enable-mamba-fine-grained-prefix-cache --no-enable-nccl-comm-suspend "
        "--no-enable-scale-out --sparse-indexer-topk-backend --watermark-config ",
        "--enable-bf16x3-router-gemm --no-enable-bf16x3-router-gemm ",
    ),
    "0.31.0": (
        "--anthropic-disabled-thinking-effort --aux-output-config --device-memory-utilization "
        "--enable-mamba-shared-prefix-checkpoint --log-level --logging-config "
        "--long-prefill-token-threshold-adaptive --max-lora-cls-labels --max-num-active-seqs "
        "--no-enable-mamba-shared-prefix-checkpoint --no-long-prefill-token-threshold-adaptive "
        "--no-swa-bounded-replay --no-trust-request-mm-kwargs --sleep-preserve-parameter-names "
        "--swa-bounded-replay --tool-strict-level --trust-request-mm-kwargs ",
        "--enable-mamba-fine-grained-prefix-cache --no-enable-mamba-fine-grained-prefix-cache ",
    ),
    "0.32.0": (
        "--custom-histogram-buckets --enable-hc-sp --enable-shm-tensor-arena --grpc-port "
        "--no-enable-hc-sp --no-enable-shm-tensor-arena --no-sleep-mode-offload-cudagraph "
        "--sleep-mode-offload-cudagraph ",
        "",
    ),
    "0.33.0": (
        "--monokernel --no-monokernel --reasoning-effort-map --sleep-mode-backend "
        "--watchdog-config ",
        "",
    ),
}


def _vkey(version: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\d+\.\d+\.\d+(\.\d+|\.post\d+)?", version):
        raise ValueError(f"vllm_version {version!r} is not a vLLM release number such as '0.10.1'")
    return tuple(int(part) for part in version.replace(".post", ".").split("."))


@dataclass(frozen=True)
class Release:
    """What the planner needs to know about one vllm/vllm-openai:v<version> image."""

    version: str
    cuda: tuple[int, int]  # CUDA of the image = its nvidia-container `cuda>=` requirement
    torch: str  # torch==<pin> in the wheel's METADATA [W]
    flags: frozenset[str] = field(repr=False)
    # V1 is the default engine in every row (VLLM_USE_V1 defaults to 1 since 0.8.0) [W envs.py].
    v1_default: bool = True
    # CC below which V1 refuses the GPU (None: no V1-specific floor). 0.8.5-0.10.1.1 arg_utils
    # `_is_v1_supported_oracle`: "Compute Capability < 8.0" -> `_raise_or_fallback` (V0); gone in 0.10.2,
    # whose platforms/cuda.py picks FlexAttention (0.11.1+: TRITON_ATTN in the list) below CC 8.0 [W].
    v1_min_cc: float | None = None
    # V0 engine still shipped, so V1's refusal falls back to V0 instead of failing; removed in 0.11.0
    # (platforms/cuda.py: "V0 attention backends have been removed") [W].
    v0_fallback: bool = False
    # Lowest CC with kernels in the image: cu12 builds list sm_70 (Dockerfile torch_cuda_arch_list
    # '7.0 7.5 8.0 8.9 9.0 10.0+PTX'); CUDA 13 dropped sm_70/72 (CUDA 13.0 release notes) [U: derived].
    image_min_cc: float = 7.0
    # `--quantization awq` runs Marlin/Machete on CC>=8.0 (True) or forces the slow AWQ GEMM (False):
    # quantization/__init__.py maps "awq" -> AutoAWQConfig from 0.24.0, AWQConfig before (whose
    # awq_marlin.override_quantization_method keeps an explicit "awq") [W]; 0.26.0 ran Machete [M].
    awq_upgraded: bool = False
    # Chunked prefill on unless --no-enable-chunked-prefill: V1 always schedules chunked prefill
    # (SchedulerConfig.enable_chunked_prefill default True) [W]; the V0 fallback decides by itself.
    chunked_prefill_default: bool = True
    # Prefix caching on by default for generative models: 0.8.5 `_set_default_args_v1` sets it, later
    # CacheConfig.enable_prefix_caching defaults True [W].
    prefix_caching_default: bool = True
    # --swap-space exists and is GiB of CPU swap *per GPU* (config/cache.py "Size of the CPU swap space per
    # GPU (in GiB)"); the flag is gone from 0.18.0 [W].
    swap_space_per_gpu: bool = True
    # fp8 KV cache with fp16 activations on sm90 fails at engine start ("For FP8 input, output must have dtype
    # BF16"): True measured on 0.26.0 [M] and assumed for newer [U]; None = not known for this release.
    fp8_kv_fp16_fails: bool | None = None
    # A "-cu129" variant image (CUDA 12.9 build next to the CUDA 13 default) is known to exist on Docker Hub:
    # v0.20.0-cu129 (vllm#39878), v0.20.2-cu129 (github.com/llm-d/llm-d-kv-cache/pull/584), v0.21.0-cu129
    # (github.com/NVIDIA/Model-Optimizer/pull/2042, its registry manifest query). Later releases may have one too
    # (a "latest-cu129" tag was mirrored on 2026-08-19: github.com/imdingtalk/image-mirror/issues/1820), but no
    # source here names the release, so vllm_image "auto" never picks them: set vllm_image to such a tag yourself.
    cu129_variant: bool = False
    # `--reasoning-parser qwen3` keeps the answer of a non-thinking turn in `content`:
    # - 0.8.5-0.9.x: the qwen3 parser was added for exactly that (vllm#17369, in 0.8.5: an output without both
    #   <think> and </think> is all content); it runs only with --enable-reasoning (removed in 0.10.0);
    # - 0.26.0+: the parser takes every output for reasoning unless chat_template_kwargs.enable_thinking is false
    #   (vllm/parser/qwen3.py; vllm#53284 reports the same on 0.27.1 and 0.28.0) and gets the server's
    #   --default-chat-template-kwargs merged under the request's (serving.py _effective_chat_template_kwargs), so the
    #   planner passes '{"enable_thinking": false}' there: measured on an H200 with 0.26.0, a plain request's answer
    #   stayed in `content` and opt-in thinking went to `reasoning` (docs/h200-serve/) [M];
    # - 0.10.0-0.25.1: not checked (no wheel of 0.12-0.21 in reach, the parser was rewritten in between): no parser.
    reasoning_parser: str | None = None

    @property
    def key(self) -> tuple[int, ...]:
        return _vkey(self.version)

    @property
    def awq_flag_forces_gemm(self) -> bool:
        """`--quantization awq` pins the slow AWQ GEMM kernel even where Marlin runs (CC >= 8.0)."""
        return not self.awq_upgraded




def _row(version: str, cuda: tuple[int, int], torch: str) -> tuple[str, tuple[int, int], str]:
    return version, cuda, torch


# (version, image CUDA, torch pin); CUDA source per row, torch from the wheel's METADATA [W].
_ROWS = [
    _row("0.8.5", (12, 4), "2.6.0"),  # [U] Dockerfile ARG CUDA_VERSION=12.4.1 (from memory)
    _row("0.8.5.post1", (12, 4), "2.6.0"),  # [U] Dockerfile ARG CUDA_VERSION=12.4.1 (from memory)
    _row("0.9.0", (12, 8), "2.7.0"),  # vllm#18813: v0.9.0 image needs cuda>=12.8
    _row("0.9.0.1", (12, 8), "2.7.0"),  # vllm#18813: v0.9.0 image needs cuda>=12.8
    _row("0.9.1", (12, 8), "2.7.0"),  # vllm#18813: v0.9.0 image needs cuda>=12.8
    _row("0.9.2", (12, 8), "2.7.0"),  # vllm#18813: v0.9.0 image needs cuda>=12.8
    _row("0.10.0", (12, 8), "2.7.1"),  # [U] Dockerfile CUDA_VERSION=12.8.1 since 0.9.0; envs.py has no MAIN_CUDA yet
    _row("0.10.1", (12, 8), "2.7.1"),  # [U] Dockerfile CUDA_VERSION=12.8.1 since 0.9.0; envs.py has no MAIN_CUDA yet
    _row("0.10.1.1", (12, 8), "2.7.1"),  # [U] Dockerfile CUDA_VERSION=12.8.1 since 0.9.0; envs.py has no MAIN_CUDA yet
    _row("0.10.2", (12, 8), "2.8.0"),  # [U] Dockerfile CUDA_VERSION=12.8.1 since 0.9.0; envs.py has no MAIN_CUDA yet
    _row("0.11.0", (12, 8), "2.8.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 12.8
    _row("0.11.1", (12, 9), "2.9.0"),  # 0.11.1 notes: default build torch 2.9.0+cu129 (envs.py still 12.8)
    _row("0.11.2", (12, 9), "2.9.0"),  # 0.11.1 notes: default build torch 2.9.0+cu129 (envs.py still 12.8)
    _row("0.12.0", (12, 9), "2.9.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 12.9
    _row("0.13.0", (12, 9), "2.9.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 12.9
    _row("0.14.0", (12, 9), "2.9.1"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 12.9
    _row("0.14.1", (12, 9), "2.9.1"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 12.9
    _row("0.15.0", (12, 9), "2.9.1"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 12.9
    _row("0.15.1", (12, 9), "2.9.1"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 12.9
    _row("0.16.0", (12, 9), "2.9.1"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 12.9
    _row("0.17.0", (12, 9), "2.10.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 12.9
    _row("0.17.1", (12, 9), "2.10.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 12.9
    _row("0.18.0", (12, 9), "2.10.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 12.9
    _row("0.18.1", (12, 9), "2.10.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 12.9
    _row("0.19.0", (12, 9), "2.10.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 12.9
    _row("0.19.1", (12, 9), "2.10.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 12.9
    _row("0.20.0", (13, 0), "2.11.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.20.1", (13, 0), "2.11.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.20.2", (13, 0), "2.11.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.21.0", (13, 0), "2.11.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.22.0", (13, 0), "2.11.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.22.1", (13, 0), "2.11.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.23.0", (13, 0), "2.11.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.24.0", (13, 0), "2.11.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.25.0", (13, 0), "2.11.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.25.1", (13, 0), "2.11.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.26.0", (13, 0), "2.11.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.27.0", (13, 0), "2.13.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.27.1", (13, 0), "2.13.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.28.0", (13, 0), "2.13.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.29.0", (13, 0), "2.13.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.30.0", (13, 0), "2.13.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.31.0", (13, 0), "2.13.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.32.0", (13, 0), "2.13.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
    _row("0.33.0", (13, 0), "2.14.0"),  # [W] envs.py VLLM_MAIN_CUDA_VERSION 13.0
]


def _build() -> dict[str, Release]:
    table: dict[str, Release] = {}
    flags = _BASE_FLAGS
    for version, cuda, torch in _ROWS:
        if version in _FLAG_DELTAS:
            added, removed = _FLAG_DELTAS[version]
            flags = (flags | frozenset(added.split())) - frozenset(removed.split())
        key = _vkey(version)
        table[version] = Release(
            version=version,
            cuda=cuda,
            torch=torch,
            flags=flags,
            v1_min_cc=8.0 if key < (0, 10, 2) else None,
            v0_fallback=key < (0, 11, 0),
            image_min_cc=7.0 if cuda[0] == 12 else 7.5,
            awq_upgraded=key >= (0, 24, 0),
            swap_space_per_gpu="--swap-space" in flags,
            fp8_kv_fp16_fails=True if key >= (0, 26, 0) else None,
            cu129_variant=version in ("0.20.0", "0.20.2", "0.21.0"),
            reasoning_parser="qwen3" if key < (0, 10, 0) or key >= (0, 26, 0) else None,
        )
    return table


VLLM_RELEASES: dict[str, Release] = _build()
NEWEST = max(VLLM_RELEASES.values(), key=lambda r: r.key)

# vllm/vllm-openai tags carry a CUDA suffix for the non-default build ("v0.20.0-cu129") [vllm#39878].
_TAG = re.compile(r"v?(?P<version>\d+\.\d+\.\d+(?:\.\d+|\.post\d+)?)(?:-cu(?P<cuda>\d{3}))?")


def parse_image(ref: str) -> tuple[str, str]:
    """Split "registry:port/repo:tag[@digest]" into (repository, tag); a ref without a tag is an error."""
    name = ref.strip().split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if not name or colon <= slash or colon == len(name) - 1:
        raise ValueError(
            f"vllm_image {ref!r} has no tag; give an explicit one such as "
            f"'vllm/vllm-openai:v{NEWEST.version}' (or vllm_image='auto')"
        )
    return name[:colon], name[colon + 1 :]


def version_of_image(ref: str, declared: str | None = None) -> str:
    """vLLM release inside `ref`: from a "v0.10.1"-style tag, else the declared vllm_version."""
    _, tag = parse_image(ref)
    match = _TAG.fullmatch(tag)
    if match:
        version = match.group("version")
        if declared is not None and _vkey(declared) != _vkey(version):
            raise ValueError(f"vllm_version {declared!r} contradicts vllm_image {ref!r} (tag says {version})")
        return version
    if declared is None:
        raise ValueError(
            f"vllm_image {ref!r} has tag {tag!r}, which names no vLLM release; set vllm_version "
            "to the release it contains (e.g. '0.10.1') or use a 'v<version>' tag"
        )
    _vkey(declared)
    return declared


def cuda_of_image(ref: str, rel: Release) -> tuple[int, int]:
    """CUDA of `ref`: its "-cuNNN" tag suffix when present, else the release's default build."""
    match = _TAG.fullmatch(parse_image(ref)[1])
    if match and match.group("cuda"):
        digits = match.group("cuda")
        return int(digits[:-1]), int(digits[-1])
    return rel.cuda


def release(version: str) -> Release:
    """The table row of `version`; unknown versions are an error listing the known ones."""
    try:
        return VLLM_RELEASES[version]
    except KeyError:
        raise ValueError(
            f"vllm_version {version!r} is not in gpu-llm's release table; known: {', '.join(VLLM_RELEASES)}"
        ) from None


def known_flags(version: str) -> frozenset[str]:
    """Every --flag `vllm serve` of `version` accepts (engine + OpenAI server)."""
    return release(version).flags


# ---- which image a driver starts ------------------------------------------------------------------------------
#
# nvidia-container-cli checks the image's NVIDIA_REQUIRE_CUDA before the container starts (libnvidia-container
# src/cli/configure.c configure_command: per visible GPU, rules cuda/driver/arch/brand; src/cli/dsl.c dsl_evaluate:
# space-separated terms are ORed, comma-separated conditions ANDed; a failure prints "unsatisfied condition:
# cuda>=X, please update your driver ..."). The CUDA 12.9 images carry, from their nvidia/cuda:12.9.1 base,
# NVIDIA_REQUIRE_CUDA = "cuda>=12.9" OR brand=<b>,driver>=<n>,driver<<n+1> for n in 535 550 560 565 570 and b in
# BRANDS_WITH_COMPAT (the env of a vllm/vllm-openai CUDA 12.9.1 image, as `collect_env` prints it:
# tests/fixtures/nvidia_require_cuda_12.9.txt). So on driver 570 (CUDA 12.8) a CUDA 12.9 image starts on a
# data-center or workstation GPU and is refused on a GeForce/Titan. Inside, CUDA's minor version compatibility
# runs a 12.9 runtime on a 12.x driver >= 525.60.13 (docs.nvidia.com/deploy/cuda-compatibility/, "Minor Version
# Compatibility"); its limit, no PTX JIT for newer PTX, does not bite: the images ship SASS for
# TORCH_CUDA_ARCH_LIST 7.0 7.5 8.0 8.9 9.0 10.0 12.0 (same fixture).
COMPAT_DRIVER_BRANCHES: dict[tuple[int, int], tuple[int, ...]] = {(12, 9): (535, 550, 560, 565, 570)}
BRANDS_WITH_COMPAT = ("unknown", "grid", "tesla", "nvidia", "quadro", "quadrortx", "nvidiartx", "vapps", "vpc",
                      "vcs", "vws", "cloudgaming")


def gpu_brand(name: str) -> str:
    """NVML's brand of a GPU, from its name (nvidia-smi's --query-gpu has no brand field): GeForce and TITAN cards
    are brand GeForce/Titan, other current cards (H100, A100, L40S, RTX A6000) NVIDIA/Tesla/NvidiaRTX [U]."""
    lowered = name.lower()
    if "geforce" in lowered:
        return "geforce"
    if "titan" in lowered:
        return "titan"
    return "nvidia"


def image_requirement(cuda: tuple[int, int]) -> str:
    """The NVIDIA_REQUIRE_CUDA value of an image built on CUDA `cuda` (as the vendor's base images set it)."""
    terms = [f"cuda>={cuda[0]}.{cuda[1]}"]
    for branch in COMPAT_DRIVER_BRANCHES.get(cuda, ()):
        terms += [f"brand={b},driver>={branch},driver<{branch + 1}" for b in BRANDS_WITH_COMPAT]
    return " ".join(terms)


def driver_runs(image_cuda: tuple[int, int], driver_version: str, brands: list[str] | set[str]) -> bool:
    """Whether nvidia-container-cli starts an image built on `image_cuda` with this driver and GPU brands."""
    driver = _driver_tuple(driver_version)
    if image_cuda <= cuda_for_driver(driver_version):
        return True
    branches = COMPAT_DRIVER_BRANCHES.get(image_cuda, ())
    return bool(brands) and driver[0] in branches and all(b in BRANDS_WITH_COMPAT for b in brands)


@dataclass(frozen=True)
class ImageChoice:
    """An image for a release: the default build or its -cu129 variant."""

    ref: str
    release: Release
    cuda: tuple[int, int]


def images_of(rel: Release) -> list[ImageChoice]:
    """The images a release is published as: its default build, plus the -cu129 variant where one is known."""
    out = [ImageChoice(f"vllm/vllm-openai:v{rel.version}", rel, rel.cuda)]
    if rel.cu129_variant and rel.cuda != (12, 9):
        out.append(ImageChoice(f"vllm/vllm-openai:v{rel.version}-cu129", rel, (12, 9)))
    return out


def image_min_cc(cuda: tuple[int, int]) -> float:
    """Lowest CC with kernels in an image built on `cuda` (CUDA 13 dropped sm_70/72, CUDA 13.0 notes) [U]."""
    return 7.0 if cuda[0] == 12 else 7.5


def newest_image_for(driver_version: str, min_cc: float, brands: list[str] | set[str]) -> ImageChoice:
    """Newest image the driver starts (NVIDIA_REQUIRE_CUDA as nvidia-container-cli evaluates it) whose kernels
    cover the weakest GPU (CC `min_cc`)."""
    fits = [
        img
        for r in VLLM_RELEASES.values()
        for img in images_of(r)
        if driver_runs(img.cuda, driver_version, brands)
        and image_min_cc(img.cuda) <= min_cc
        and (r.v1_min_cc is None or min_cc >= r.v1_min_cc or r.v0_fallback)
    ]
    if not fits:
        cuda = cuda_for_driver(driver_version)
        raise ValueError(
            f"no vLLM release in the table runs on CUDA {cuda[0]}.{cuda[1]} with compute "
            f"capability {min_cc}; raise nvidia_driver_version (CUDA {NEWEST.cuda[0]}.{NEWEST.cuda[1]} runs "
            f"v{NEWEST.version})"
        )
    # newest release first; of one release, the default build (newer CUDA) before the variant
    return max(fits, key=lambda img: (img.release.key, img.cuda))


def newest_release_for(driver_cuda: tuple[int, int], min_cc: float) -> Release:
    """Newest release whose default image a driver running `driver_cuda` starts without the compat clauses."""
    fits = [
        r
        for r in VLLM_RELEASES.values()
        if r.cuda <= driver_cuda
        and r.image_min_cc <= min_cc
        and (r.v1_min_cc is None or min_cc >= r.v1_min_cc or r.v0_fallback)
    ]
    if not fits:
        raise ValueError(
            f"no vLLM release in the table runs on CUDA {driver_cuda[0]}.{driver_cuda[1]} with compute "
            f"capability {min_cc}; raise nvidia_driver_version (CUDA {NEWEST.cuda[0]}.{NEWEST.cuda[1]} runs "
            f"v{NEWEST.version})"
        )
    return max(fits, key=lambda r: r.key)
