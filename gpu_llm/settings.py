"""Every tunable of gpu-llm, declared once: name, type, default, validation and a one-line doc.

Override any key in group_data/<group>.py, in the inventory's host data, or with `pyinfra --data key=value`
(highest first: --data, host data, groups, group_data/all.py, then the defaults here). `None` or "auto" means
"derive it from the host's GPUs". A key with one of our prefixes that is not declared here is refused (typo guard);
every problem is reported before any host is touched.

The README's settings table is generated from `Settings`: `python -m gpu_llm.settings --write-readme`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import ipaddress
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict, get_args

from gpu_llm.plan.types import QWEN3_32B_AWQ
from gpu_llm.remote.download import TRANSFERS

# Host data keys starting with these belong to us: an unknown one is a typo, not someone else's key. The value is
# the section a setting is listed under (README table).
SECTIONS: dict[str, str] = {
    "preflight_": "preflight",
    "nvidia_": "NVIDIA driver",
    "cuda_": "CUDA toolkit",
    "docker_": "Docker",
    "container_toolkit_": "NVIDIA Container Toolkit",
    "model_": "Model",
    "hf_": "Model",
    "vllm_": "vLLM",
    "watchdog_": "Watchdog (GPU hosts)",
    "gateway_": "Gateway (hosts in group gateways)",
    "monitoring_": "Monitoring (hosts in group monitoring)",
}
OUR_PREFIXES = tuple(SECTIONS)

Profile = Literal["auto", "balanced", "max-context", "throughput"]
PROFILES: tuple[str, ...] = get_args(Profile)
# Qwen3-32B: 64 attention heads, 8 KV heads -> TP must divide both (vLLM asserts this at start).
TP_SIZES = tuple(n for n in range(1, 65) if QWEN3_32B_AWQ.num_attention_heads % n == 0
                 and QWEN3_32B_AWQ.num_kv_heads % n == 0)


class SettingsError(ValueError):
    """One or more invalid settings; `problems` holds (key, message) pairs, the first is `key`."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        self.key = problems[0][0]
        lines = [f"  - {message}" for _, message in problems]
        super().__init__("invalid gpu-llm settings:\n" + "\n".join(lines))


class _Invalid(Exception):
    pass


# ---- validators: each returns the (normalised) value or raises _Invalid("what is allowed"); `allowed` holds
# ---- that text for the README --------------------------------------------------------------------------------

Check = Callable[[Any], Any]


def _allows(allowed: str) -> Callable[[Check], Check]:
    def mark(check: Check) -> Check:
        check.allowed = allowed  # type: ignore[attr-defined]
        return check

    return mark


@_allows("true or false")
def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise _Invalid(_bool.allowed)  # type: ignore[attr-defined]


def _int(lo: int | None = None, hi: int | None = None, allow_none: bool = False) -> Check:
    allowed = _range_text("an integer", lo, hi, allow_none)

    @_allows(allowed)
    def check(v: Any) -> Any:
        if v is None and allow_none:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Invalid(allowed)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _Invalid(allowed)
        return v

    return check


def _range_text(kind: str, lo: Any, hi: Any, allow_none: bool) -> str:
    text = kind
    if lo is not None and hi is not None:
        text += f" from {lo} to {hi}"
    elif lo is not None:
        text += f" >= {lo}"
    return text + (" or null (derive from the GPUs)" if allow_none else "")


@_allows("a number greater than 0.05 and at most 0.99, or null (profile value)")
def _utilization(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.05 < v <= 0.99:
        raise _Invalid(_utilization.allowed)  # type: ignore[attr-defined]
    return float(v)


def _choice(*choices: Any) -> Check:
    allowed = "one of " + ", ".join(repr(c) if c is not None else "null" for c in choices)

    @_allows(allowed)
    def check(v: Any) -> Any:
        if v in choices and type(v) is type(next(c for c in choices if c == v)):
            return v
        raise _Invalid(allowed)

    check.choices = choices  # type: ignore[attr-defined]
    return check


def _str(pattern: str | None = None, allowed: str = "a non-empty string", allow_none: bool = False) -> Check:
    allowed += " or null" if allow_none else ""

    @_allows(allowed)
    def check(v: Any) -> Any:
        if v is None and allow_none:
            return None
        if not isinstance(v, str) or not v or (pattern and not re.fullmatch(pattern, v)):
            raise _Invalid(allowed)
        return v

    return check


@_allows("an absolute path (starting with /)")
def _abs_path(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/") or "\n" in v:
        raise _Invalid(_abs_path.allowed)  # type: ignore[attr-defined]
    return v.rstrip("/") or "/"


@_allows("an http:// or https:// URL")
def _url(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"https?://[^\s/]+(/\S*)?", v):
        raise _Invalid(_url.allowed)  # type: ignore[attr-defined]
    return v.rstrip("/")


@_allows("a list of strings")
def _list_of_str(v: Any) -> list[str]:
    if not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
        raise _Invalid(_list_of_str.allowed)  # type: ignore[attr-defined]
    return list(v)


@_allows('a mapping of strings to strings, e.g. {"NCCL_DEBUG": "WARN"}')
def _dict_of_str(v: Any) -> dict[str, str]:
    if not isinstance(v, Mapping) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise _Invalid(_dict_of_str.allowed)  # type: ignore[attr-defined]
    return dict(v)


@_allows("a mapping")
def _dict(v: Any) -> dict:
    if not isinstance(v, Mapping):
        raise _Invalid(_dict.allowed)  # type: ignore[attr-defined]
    return dict(v)


@_allows('"auto" or an image reference with a tag, e.g. "vllm/vllm-openai:v0.10.1"')
def _image(v: Any) -> str:
    allowed = _image.allowed  # type: ignore[attr-defined]
    if v == "auto":
        return v
    if not isinstance(v, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._/:-]*(@sha256:[0-9a-f]{64})?", v):
        raise _Invalid(allowed)
    name = v.split("@", 1)[0]
    if ":" not in name.rsplit("/", 1)[-1] and "@" not in v:
        raise _Invalid(allowed + " (a reference without a tag would float to :latest)")
    return v


@_allows('"auto" or one of ' + ", ".join(map(str, TP_SIZES)) + " (must divide Qwen3-32B's 64 attention and 8 KV heads)")
def _tp(v: Any) -> Any:
    if v == "auto":
        return v
    if isinstance(v, bool) or not isinstance(v, int) or v not in TP_SIZES:
        raise _Invalid(_tp.allowed)  # type: ignore[attr-defined]
    return v


@_allows(f'"auto" or an integer from 256 to {QWEN3_32B_AWQ.max_position_embeddings} (Qwen3-32B\'s context without '
         "rope scaling)")
def _max_model_len(v: Any) -> Any:
    if v == "auto":
        return v
    if isinstance(v, bool) or not isinstance(v, int) or not 256 <= v <= QWEN3_32B_AWQ.max_position_embeddings:
        raise _Invalid(_max_model_len.allowed)  # type: ignore[attr-defined]
    return v


@_allows('"auto" or an IP address, e.g. "10.0.0.5" ("auto": the host\'s inventory address when it is a private IP, '
         'else 127.0.0.1 on the monitoring host and 0.0.0.0 on the GPU hosts)')
def _bind(v: Any) -> str:
    if v == "auto":
        return v
    try:
        return str(ipaddress.ip_address(v))
    except (ValueError, TypeError):
        raise _Invalid(_bind.allowed) from None  # type: ignore[attr-defined]


@_allows('a duration like "15d", "12h" or "4w" (Prometheus: s, m, h, d, w, y)')
def _duration(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[1-9][0-9]*[smhdwy]", v):
        raise _Invalid(_duration.allowed)  # type: ignore[attr-defined]
    return v


@_allows("a number of seconds greater than 0 and at most 3600")
def _seconds(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 3600:
        raise _Invalid(_seconds.allowed)  # type: ignore[attr-defined]
    return float(v)


@_allows('an IP address, e.g. "0.0.0.0" or "10.0.0.5"')
def _ip(v: Any) -> str:
    try:
        return str(ipaddress.ip_address(v))
    except (ValueError, TypeError):
        raise _Invalid(_ip.allowed) from None  # type: ignore[attr-defined]


# Docker's container-name rule (moby daemon/names: ^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$): at least 2 characters.
_NAME = r"[a-zA-Z0-9][a-zA-Z0-9_.-]+"
_VERSION3 = r"\d+\.\d+(\.\d+)?"
_PACKAGE_VERSION = r"[0-9][0-9A-Za-z.+~-]*"


@_allows('null or a list of {"name": str, "port": int, "gpus": [int, ...]} with distinct names, ports and GPUs; '
         'a name is a Docker container name: 2+ letters, digits, _ . -')
def _instances(v: Any) -> list[dict] | None:
    allowed = _instances.allowed  # type: ignore[attr-defined]
    if v is None:
        return None
    if not isinstance(v, list) or not v:
        raise _Invalid(allowed)
    names, ports, gpus = set(), set(), set()
    out = []
    for item in v:
        if not isinstance(item, Mapping) or set(item) - {"name", "port", "gpus", "served_model_name"}:
            raise _Invalid(allowed)
        name = _str(_NAME, allowed)(item.get("name"))
        port = item.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise _Invalid(allowed)
        idx = item.get("gpus")
        if not isinstance(idx, list) or not idx or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in idx):
            raise _Invalid(allowed)
        if name in names or port in ports or gpus & set(idx):
            raise _Invalid(allowed)
        if len(idx) not in TP_SIZES:
            raise _Invalid(allowed + f"; each instance's GPU count must be one of {TP_SIZES}")
        names.add(name), ports.add(port), gpus.update(idx)
        out.append(dict(item))
    return out


class Instance(TypedDict, total=False):
    """One item of vllm_instances (served_model_name is optional: vllm_served_model_name by default)."""

    name: str
    port: int
    gpus: list[int]
    served_model_name: str


# ---- the declaration -----------------------------------------------------------------------------------------


def setting(default: Any, check: Check, doc: str) -> Any:
    """One setting's declaration: its default, its validator and a one-line doc (README "what it does").

    Lists and dicts get a default_factory (a fresh copy per Settings); the doc must be one line and the validator
    must say what it allows (its `allowed` text is the README's "allowed values" column).
    """
    if not isinstance(doc, str) or not doc.strip() or "\n" in doc:
        raise TypeError(f"setting(default={default!r}): the doc must be one non-empty line, got {doc!r}")
    if not callable(check) or not getattr(check, "allowed", None):
        raise TypeError(f"setting(default={default!r}): {check!r} is not a validator (one with an `allowed` text)")
    metadata = {"check": check, "doc": doc}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated settings of one host: build with from_data(host data) or for_host(host), not Settings(...)."""

    # ---- preflight ---------------------------------------------------------------------------------------------
    preflight_supported_os: list[str] = setting(
        ["ubuntu-24.04", "ubuntu-22.04", "debian-12"], _list_of_str,
        "Refuse hosts whose OS is not one of these (ID-VERSION_ID from /etc/os-release).")
    preflight_image_gib: int = setting(
        25, _int(0, 1000),
        "Disk space reserved for the vLLM image (GiB), added to the model's size in the free-disk check.")
    preflight_require_gpu: bool = setting(
        True, _bool,
        "Refuse hosts where no NVIDIA GPU is found on the PCI bus (set false to provision GPU-less builders).")
    # ---- NVIDIA driver -----------------------------------------------------------------------------------------
    nvidia_driver_install: bool = setting(
        True, _bool, "Install the NVIDIA driver (from nvidia_driver_source).")
    nvidia_driver_source: Literal["nvidia", "ubuntu"] = setting(
        "nvidia", _choice("nvidia", "ubuntu"),
        '"nvidia": NVIDIA\'s CUDA repository (DKMS-built, unsigned modules: refused under Secure Boot); "ubuntu": '
        "Canonical's signed precompiled modules and the -server driver from Ubuntu's restricted archive.")
    nvidia_driver_branch: str = setting(
        "570", _str(r"\d{3}", 'a driver branch like "570"'),
        "Driver branch (major version); packages are `nvidia-driver-<branch>[-open]`.")
    nvidia_driver_version: str = setting(
        "570.172.08", _str(_VERSION3, 'a driver version like "570.153.02"'),
        "Exact driver version, pinned with apt preferences and held. NVIDIA's CUDA apt repo lacks "
        "570.153.02 (used by github.com/jackypanster/deploy-qwen3-32b-awq) (its 570 releases: .124.06 .133.20 .148.08 .158.01 .172.08 .195.03).")
    nvidia_driver_open: bool = setting(
        True, _bool, "Open kernel modules (right for Turing and newer); false installs the proprietary modules.")
    nvidia_driver_replace: bool = setting(
        False, _bool, "Replace a different apt-installed driver version instead of refusing.")
    nvidia_driver_reboot: bool = setting(
        True, _bool, "Reboot when the loaded kernel module differs from the installed driver (else stop and say so).")
    nvidia_driver_reboot_timeout: int = setting(
        600, _int(30, 7200), "Seconds to wait for a host to come back after a driver reboot.")
    nvidia_fabric_timeout: int = setting(
        300, _int(10, 3600),
        "Seconds to wait, on NVSwitch hosts, for nvidia-smi to report the fabric completed after the fabric manager starts.")
    nvidia_driver_blacklist_nouveau: bool = setting(
        True, _bool, "Blacklist the nouveau kernel module.")
    nvidia_cuda_repo_url: str = setting(
        "https://developer.download.nvidia.com/compute/cuda/repos", _url,
        "Base URL of NVIDIA's CUDA apt repositories (the distro/arch path is appended).")
    nvidia_cuda_keyring_version: str = setting(
        "1.1-1", _str(_PACKAGE_VERSION, 'a package version like "1.1-1"'),
        "Version of the cuda-keyring package that installs NVIDIA's repo signing key.")
    # ---- CUDA toolkit ------------------------------------------------------------------------------------------
    cuda_toolkit_install: bool = setting(
        True, _bool, "Install the CUDA toolkit on the host (the vLLM container brings its own CUDA runtime).")
    cuda_toolkit_version: str = setting(
        "12.8", _str(r"\d+\.\d+", 'a CUDA release like "12.8"'),
        "CUDA toolkit release (package `cuda-toolkit-<major>-<minor>`).")
    # ---- Docker ------------------------------------------------------------------------------------------------
    docker_package_source: Literal["docker", "ubuntu"] = setting(
        "docker", _choice("docker", "ubuntu"),
        'Where Docker comes from: "docker" (Docker\'s apt repo, docker-ce) or "ubuntu" (Ubuntu\'s docker.io).')
    docker_repo_url: str = setting(
        "https://download.docker.com/linux", _url, "Docker's apt repository base URL (the distro id is appended).")
    docker_daemon_config: dict[str, object] = setting(
        {"default-ulimits": {"memlock": {"Name": "memlock", "Hard": -1, "Soft": -1}},
         "log-driver": "json-file",
         "log-opts": {"max-size": "100m", "max-file": "3"}}, _dict,
        "Keys merged into /etc/docker/daemon.json (other keys already there are kept).")
    # ---- NVIDIA Container Toolkit ------------------------------------------------------------------------------
    container_toolkit_repo_url: str = setting(
        "https://nvidia.github.io/libnvidia-container", _url,
        "Base URL of NVIDIA's libnvidia-container apt repository.")
    container_toolkit_version: str | None = setting(
        None, _str(_PACKAGE_VERSION, 'a package version like "1.17.8-1"', allow_none=True),
        "Pinned nvidia-container-toolkit package version, or null for the repository's newest.")
    # ---- Model -------------------------------------------------------------------------------------------------
    model_repo: str = setting(
        "Qwen/Qwen3-32B-AWQ",
        _str(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*", 'a Hugging Face repo id like "Qwen/Qwen3-32B-AWQ"'),
        "Hugging Face repository of the model to serve.")
    model_revision: str = setting(
        "main", _str(r"[A-Za-z0-9][A-Za-z0-9_./-]*", "a commit, branch or tag name"),
        "Revision to download: a commit (pinned) or a branch/tag (resolved to a commit and reported).")
    model_dir: str = setting(
        "/home/llm/model/qwen/Qwen3-32B-AWQ", _abs_path,
        "Absolute path on the host where the model snapshot is stored (the path github.com/jackypanster/deploy-qwen3-32b-awq uses).")
    model_owner: str = setting(
        "root", _str(r"[a-z_][a-z0-9_-]*", "a user name"), "Owner of model_dir and its files.")
    hf_venv: str = setting(
        "/opt/gpu-llm/hf-venv", _abs_path, "Absolute path of the virtualenv on the host that holds huggingface-hub.")
    hf_hub_requirement: str = setting(
        "huggingface-hub>=1.0,<3", _str(),
        "pip requirement installed into hf_venv (1.x+ brings hf_xet, its fastest transfer backend).")
    hf_pip_args: list[str] = setting(
        [], _list_of_str, 'Extra pip options for the venv install (e.g. ["--index-url", "https://mirror/simple"]).')
    hf_endpoint: str = setting(
        "https://huggingface.co", _url,
        "Hugging Face endpoint; set a mirror (e.g. https://hf-mirror.com) where huggingface.co is slow.")
    hf_token: str | None = setting(
        None, _str(r"\S+", "a token string", allow_none=True),
        "Hugging Face token for gated/private repos; never printed, stored 0600 on the host.")
    hf_max_workers: int = setting(
        8, _int(1, 64), "Parallel download workers.")
    hf_transfer: Literal["resumable", "xet"] = setting(
        "resumable", _choice(*TRANSFERS),
        '"resumable": LFS files by HTTP Range requests, continued across runs and reboots; "xet": huggingface-hub\'s '
        "own transfer (hf_xet with HF_XET_HIGH_PERFORMANCE on Xet-backed repos; an unfinished file restarts from "
        "byte 0 in a new run).")
    hf_download_timeout: int = setting(
        7200, _int(60), "Seconds one download attempt may take before it is abandoned (it resumes on re-run).")
    # ---- vLLM --------------------------------------------------------------------------------------------------
    vllm_image: str = setting(
        "auto", _image,
        'vLLM OpenAI server image with an explicit tag, or "auto" (the newest release the GPUs and driver run).')
    vllm_version: str | None = setting(
        None, _str(r"\d+\.\d+\.\d+", 'a vLLM release like "0.10.1"', allow_none=True),
        'vLLM release inside vllm_image when its tag is not a version (e.g. "0.10.1"); null: read the tag.')
    vllm_profile: Profile = setting(
        "auto", _choice(*PROFILES),
        'Tuning profile: "balanced" (github.com/jackypanster/deploy-qwen3-32b-awq), "max-context" (github.com/jackypanster/qwen3-32b-awq on 4x 2080 Ti), "auto" (planner) or "throughput" (auto + fp8 KV cache and bf16 on compute capability >= 8.9).')
    vllm_tensor_parallel_size: Literal["auto"] | int = setting(
        "auto", _tp, '`--tensor-parallel-size`; "auto" = the number of GPUs given to the instance.')
    vllm_gpu_memory_utilization: float | None = setting(
        None, _utilization, "`--gpu-memory-utilization`; null = the profile's value.")
    vllm_max_model_len: int | Literal["auto"] = setting(
        32768, _max_model_len, "`--max-model-len` in tokens (Qwen3-32B: up to 40960 without rope scaling); \"auto\": "
        "the largest context that keeps vllm_min_full_sequences full sequences in each replica's KV cache.")
    vllm_max_num_batched_tokens: int | None = setting(
        None, _int(256, 1048576, allow_none=True), "`--max-num-batched-tokens`; null = the profile's value.")
    vllm_max_num_seqs: int | None = setting(
        None, _int(1, 4096, allow_none=True), "`--max-num-seqs`; null = the profile's/planner's value.")
    vllm_block_size: Literal[8, 16, 32] | None = setting(
        None, _choice(8, 16, 32, None), "`--block-size`; null = the profile's value.")
    vllm_enable_prefix_caching: bool | None = setting(
        None, _choice(True, False, None), "`--enable-prefix-caching`; null = the profile's value.")
    vllm_enable_chunked_prefill: bool | None = setting(
        None, _choice(True, False, None),
        "`--enable-chunked-prefill`; null = the profile's value (always on in the V1 engine).")
    vllm_dtype: Literal["auto", "half", "float16", "bfloat16"] = setting(
        "auto", _choice("auto", "half", "float16", "bfloat16"),
        '`--dtype`; "auto": half below compute capability 8.0, else the model\'s.')
    vllm_quantization: Literal["auto", "awq", "awq_marlin"] | None = setting(
        "auto", _choice("auto", "awq", "awq_marlin", None),
        '`--quantization`; "auto": the planner picks per GPU architecture and vLLM release; null: omit the flag.')
    vllm_kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = setting(
        "auto", _choice("auto", "fp8", "fp8_e4m3", "fp8_e5m2"), "`--kv-cache-dtype`.")
    # ---- vLLM: layout over the GPUs and the API coding clients need (issue 13) ----
    vllm_layout: Literal["auto", "data-parallel", "instances", "tensor-parallel"] = setting(
        "auto", _choice("auto", "data-parallel", "instances", "tensor-parallel"),
        'How a host\'s GPUs serve: each replica gets the smallest tensor parallel size that holds '
        'vllm_min_full_sequences full sequences; "data-parallel": replicas behind one API server '
        '(`--data-parallel-size`), "instances": one container per replica (ports vllm_port, +1, ...), '
        '"tensor-parallel": one instance over every GPU; "auto": data-parallel where the release has it, else '
        'instances. vllm_instances, when set, wins.')
    vllm_min_full_sequences: int = setting(
        4, _int(1, 256),
        "Full sequences of vllm_max_model_len each replica's KV cache must hold: picks the tensor parallel size "
        "(and vllm_max_model_len \"auto\").")
    vllm_tool_calls: bool = setting(
        True, _bool,
        "Parse Qwen3's tool calls into `tool_calls` (`--enable-auto-tool-choice --tool-call-parser hermes`).")
    vllm_reasoning: bool = setting(
        True, _bool,
        "Return opt-in thinking (`chat_template_kwargs: {\"enable_thinking\": true}`) apart from the answer, in "
        "`reasoning_content` (`reasoning` from vLLM 0.26) (`--reasoning-parser qwen3`), on releases whose parser "
        "keeps a non-thinking answer in `content`.")
    vllm_served_model_name: str = setting(
        "coder", _str(r"[A-Za-z0-9][A-Za-z0-9_./:-]*", "a model name of letters, digits, . _ / : -"),
        "Name clients use in the API (coder, as in github.com/jackypanster/deploy-qwen3-32b-awq).")
    vllm_container_name: str = setting(
        "coder", _str(_NAME, "a Docker container name: 2+ letters, digits, _ . -"),
        'Container name; instances get `<name>-<n>` unless named in vllm_instances.')
    vllm_port: int = setting(
        8000, _int(1, 65535), "Host port of the OpenAI-compatible API.")
    vllm_bind: str = setting(
        "0.0.0.0", _ip, "Address the port is published on when an API key is set (without a key: 127.0.0.1 only).")
    vllm_api_key: str | None = setting(
        None, _str(r"\S{8,}", "a key of at least 8 non-space characters", allow_none=True),
        "API key required by the server (`--api-key`), or null.")
    vllm_api_key_file: str | None = setting(
        None, _str(r"\S+", "a path to a file holding the key", allow_none=True),
        "Path of a file on the deploying machine holding the API key (alternative to vllm_api_key).")
    vllm_instances: list[Instance] | None = setting(
        None, _instances,
        'Instances per host: null = one with all GPUs, or a list of {"name", "port", "gpus": [indices]}.')
    vllm_extra_args: list[str] = setting(
        [], _list_of_str, "Extra vLLM flags appended verbatim (checked against the image's vLLM release).")
    vllm_env: dict[str, str] = setting(
        {}, _dict_of_str, "Extra environment variables for the container.")
    vllm_restart_policy: Literal["no", "always", "unless-stopped", "on-failure"] = setting(
        "always", _choice("no", "always", "unless-stopped", "on-failure"),
        "Docker restart policy of the container.")
    vllm_cpuset_cpus: str | None = setting(
        None, _str(r"\d+(-\d+)?(,\d+(-\d+)?)*", 'a CPU list like "0-55" or "0,2,4"', allow_none=True),
        '`--cpuset-cpus` for the container (e.g. "0-55"), or null for all CPUs.')
    vllm_ulimits: dict[str, str] = setting(
        {"memlock": "-1", "stack": "67108864"}, _dict_of_str, "Container ulimits (memlock=-1, stack=67108864 as in github.com/jackypanster/deploy-qwen3-32b-awq).")
    vllm_config_dir: str = setting(
        "/etc/gpu-llm", _abs_path, "Directory on the host holding the chat template and env files.")
    vllm_chat_template: str = setting(
        "qwen3_nonthinking.jinja", _str(r"[A-Za-z0-9_.-]+\.jinja", "a .jinja file name in templates/"),
        "Chat template shipped in templates/ that turns Qwen3's thinking off.")
    vllm_health_timeout: int = setting(
        1200, _int(10, 86400), "Seconds to wait for /health after the container (re)starts (a 32B model takes minutes).")
    vllm_smoke_test: bool = setting(
        True, _bool, "Send one chat completion after start and fail if it thinks or names the wrong model.")
    # ---- Watchdog (GPU hosts): gpu_llm/remote/watchdog.py as gpu-llm-watchdog.service --------------------------
    watchdog_enabled: bool = setting(
        True, _bool, "Run the watchdog that restarts a vLLM container whose engine hangs while /health says 200.")
    watchdog_interval: int = setting(
        15, _int(1, 3600), "Seconds between two looks at each instance (/metrics, and the probe when idle).")
    watchdog_stall_seconds: int = setting(
        120, _int(5, 86400),
        "Hung: requests running (`vllm:num_requests_running` > 0) and `vllm:generation_tokens_total` still for this long.")
    watchdog_start_grace: int = setting(
        600, _int(0, 86400),
        "Seconds after a container start before it is judged (a cold start of the 32B model took 206 s on an H200).")
    watchdog_probe_timeout: int = setting(
        30, _int(1, 600), "Seconds the idle liveness probe (a 1-token chat completion) may take.")
    watchdog_probe_failures: int = setting(
        3, _int(1, 100), "Consecutive failed liveness probes (timeout, refused, 5xx) that mean hung when idle.")
    watchdog_max_restarts_per_hour: int = setting(
        3, _int(0, 100),
        "Restarts of one container per hour; past it the watchdog stops restarting, logs CRITICAL, leaves it to a human.")
    # ---- Gateway (hosts in inventory group `gateways`): vllm-router in its own venv as gpu-llm-gateway.service ------
    gateway_port: int = setting(
        8080, _int(1, 65535), "Port of the gateway: one OpenAI-compatible URL for every vLLM instance of the inventory.")
    gateway_bind: str = setting(
        "0.0.0.0", _ip, "Address the gateway listens on.")
    gateway_policy: Literal["round_robin", "power_of_two", "cache_aware", "random"] = setting(
        "round_robin", _choice("round_robin", "power_of_two", "cache_aware", "random"),
        "vllm-router's load-balancing policy (`--policy`).")
    gateway_api_key: str | None = setting(
        None, _str(r"\S{8,}", "a key of at least 8 non-space characters", allow_none=True),
        "Key clients must send (401 without); null = the vLLM API key (vllm-router passes the client's key on to vLLM).")
    gateway_health_interval: int = setting(
        5, _int(1, 300), "Seconds between the gateway's health checks of each backend (`/health`).")
    gateway_extra_backends: list[str] = setting(
        [], _list_of_str, "Extra backend URLs outside the inventory (e.g. [\"http://10.0.0.9:8000\"]).")
    gateway_venv: str = setting(
        "/opt/gpu-llm/gateway-venv", _abs_path, "Absolute path of the virtualenv on the gateway host holding vllm-router.")
    gateway_router_requirement: str = setting(
        "vllm-router==0.1.17", _str(), "pip requirement of the router installed into gateway_venv (with hf_pip_args).")
    # vllm-router 0.1.17 serves Prometheus metrics on --prometheus-host/--prometheus-port, by default 127.0.0.1:29000
    # (vllm_router/router_args.py of the PyPI wheel vllm-router 0.1.17)
    gateway_metrics_port: int = setting(
        29000, _int(1, 65535), "Port of the gateway's Prometheus metrics (vllm-router `--prometheus-port`).")
    gateway_metrics_bind: str = setting(
        "0.0.0.0", _ip, "Address the gateway's metrics listen on (vllm-router `--prometheus-host`), for the monitoring host.")
    gateway_tls_cert: str | None = setting(
        None, _str(r"\S+", "a path to a PEM certificate file", allow_none=True),
        "Path on the deploying machine of the PEM certificate (chain) for HTTPS on gateway_port; null = plain HTTP.")
    gateway_tls_key: str | None = setting(
        None, _str(r"\S+", "a path to a PEM private key file", allow_none=True),
        "Path on the deploying machine of gateway_tls_cert's PEM private key (kept 0600 on the gateway host).")
    gateway_router_port: int = setting(
        18080, _int(1, 65535),
        "With HTTPS: port vllm-router listens on at 127.0.0.1, behind HAProxy terminating TLS on gateway_port.")
    # ---- Monitoring (hosts in inventory group `monitoring`): Prometheus, Grafana; exporters on the GPU hosts -------
    monitoring_prometheus_port: int = setting(
        9090, _int(1, 65535), "Port of Prometheus (Ubuntu's `prometheus` package) on the monitoring host.")
    monitoring_retention: str = setting(
        "15d", _duration, "How long Prometheus keeps samples (`--storage.tsdb.retention.time`).")
    monitoring_scrape_interval: int = setting(
        15, _int(1, 300), "Seconds between two scrapes of every target (and between two alert rule evaluations).")
    monitoring_bind: str = setting(
        "auto", _bind, "Address Prometheus and Grafana listen on (a private one by default; reach them by SSH tunnel "
        "or that network).")
    monitoring_exporter_bind: str = setting(
        "auto", _bind, "Address the node and GPU exporters listen on, on GPU hosts (where the monitoring host reaches "
        "them).")
    monitoring_node_exporter_port: int = setting(
        9100, _int(1, 65535), "Port of the node exporter (Ubuntu's `prometheus-node-exporter`) on every GPU host.")
    monitoring_gpu_exporter: bool = setting(
        True, _bool, "Run NVIDIA's DCGM exporter container on every GPU host (GPU utilisation, memory, temperature).")
    monitoring_gpu_exporter_image: str = setting(
        "nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04",
        _str(r"[a-z0-9][a-z0-9._/-]*:[A-Za-z0-9._-]+(@sha256:[0-9a-f]{64})?", 'an image reference with a tag, e.g. '
             '"nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04"'),
        "Image of NVIDIA's DCGM exporter (DCGM 4.2.3 supports drivers R450 and newer, incl. 570).")
    monitoring_gpu_exporter_port: int = setting(
        9400, _int(1, 65535), "Port of the DCGM exporter on every GPU host.")
    monitoring_grafana: bool = setting(
        True, _bool, "Run Grafana (Grafana's signed apt repository) with vLLM's dashboards and a fleet overview.")
    monitoring_grafana_port: int = setting(
        3000, _int(1, 65535), "Port of Grafana on the monitoring host.")
    monitoring_grafana_repo_url: str = setting(
        "https://apt.grafana.com", _url, "Grafana's apt repository (`stable main`; key at <url>/gpg.key).")
    monitoring_grafana_admin_password: str | None = setting(
        None, _str(r"\S{8,}", "a password of at least 8 non-space characters", allow_none=True),
        "Grafana's admin password (needed with monitoring_grafana); stored 0600 on the host, never printed.")
    monitoring_ttft_p99_alert: float = setting(
        10.0, _seconds, "Alert when an instance's time-to-first-token p99 over 5 minutes exceeds this many seconds.")

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Settings:
        """Build Settings from host data (defaults filled in); raise SettingsError naming every bad key."""
        return from_data(data)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


FIELDS: tuple[dataclasses.Field, ...] = dataclasses.fields(Settings)
# Every setting's default, by name (gpu_llm.defaults re-exports it).
DEFAULTS: dict[str, Any] = {f.name: _default(f) for f in FIELDS}


def section(name: str) -> str:
    """The section a setting belongs to (its prefix's)."""
    return next(title for prefix, title in SECTIONS.items() if name.startswith(prefix))


# ---- building Settings -----------------------------------------------------------------------------------------


def _cross_checks(s: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    if not s["nvidia_driver_version"].startswith(s["nvidia_driver_branch"] + "."):
        problems.append(("nvidia_driver_version", f"nvidia_driver_version={s['nvidia_driver_version']!r} is not in "
                         f"branch nvidia_driver_branch={s['nvidia_driver_branch']!r}: set both to the same branch"))
    if s["vllm_api_key"] and s["vllm_api_key_file"]:
        problems.append(("vllm_api_key", "set vllm_api_key or vllm_api_key_file, not both"))
    if s["watchdog_enabled"] and s["watchdog_stall_seconds"] < 2 * s["watchdog_interval"]:
        problems.append(("watchdog_stall_seconds", f"watchdog_stall_seconds={s['watchdog_stall_seconds']} must be at "
                         f"least twice watchdog_interval={s['watchdog_interval']} (a stall is seen between two looks)"))
    if bool(s["gateway_tls_cert"]) != bool(s["gateway_tls_key"]):
        problems.append(("gateway_tls_cert", "set gateway_tls_cert and gateway_tls_key together (HTTPS needs the "
                         "certificate and its private key), or neither (plain HTTP)"))
    if s["gateway_tls_cert"] and s["gateway_router_port"] == s["gateway_port"]:
        problems.append(("gateway_router_port", f"gateway_router_port={s['gateway_router_port']} must differ from "
                         "gateway_port: with HTTPS, HAProxy listens on gateway_port and vllm-router behind it"))
    for url in s["gateway_extra_backends"]:
        if not re.fullmatch(r"https?://[^\s/]+", url.rstrip("/")):
            problems.append(("gateway_extra_backends", f"gateway_extra_backends item {url!r}: expected a base URL like "
                             "'http://10.0.0.9:8000' (scheme, host, port; no path)"))
    if s["monitoring_grafana"] and s["monitoring_grafana_port"] == s["monitoring_prometheus_port"]:
        problems.append(("monitoring_grafana_port", "monitoring_grafana_port and monitoring_prometheus_port must differ"))
    if s["vllm_extra_args"]:
        for arg in s["vllm_extra_args"]:
            if arg.startswith("-") and not arg.startswith("--"):
                problems.append(("vllm_extra_args", f"vllm_extra_args item {arg!r}: use the long --flag form"))
    return problems


def from_data(data: Mapping[str, Any]) -> Settings:
    """Build Settings from host data (defaults filled in); raise SettingsError naming every bad key."""
    problems: list[tuple[str, str]] = []
    for key in data:
        if isinstance(key, str) and key.startswith(OUR_PREFIXES) and key not in DEFAULTS:
            close = difflib.get_close_matches(key, DEFAULTS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append((key, f"unknown setting {key!r}{hint} (gpu_llm/settings.py declares every setting)"))
    values: dict[str, Any] = {}
    for f in FIELDS:
        key = f.name
        raw = data[key] if key in data else _default(f)
        try:
            values[key] = f.metadata["check"](raw)
        except _Invalid as exc:
            problems.append((key, f"{key}={raw!r} is invalid: expected {exc}"))
    if not problems:
        problems = _cross_checks(values)
    if problems:
        raise SettingsError(problems)
    return Settings(**values)


_HOST_ATTR = "_gpu_llm_settings"  # on the host object: one validation per host and run (and per test's host)


def for_host(host: Any) -> Settings:
    """Settings of a pyinfra host (its data: --data > host > groups > group_data/all.py > defaults).

    Validated on the first call for a host object and kept on it: host data is fixed once pyinfra has loaded the
    inventory, and each deploy of a run asks again. A failed validation is not kept (it raises every time).
    """
    from pyinfra.context import ContextObject, ctx_host  # pyinfra only where a deploy runs (not `gpu-llm plan`)

    if isinstance(host, ContextObject):  # pyinfra's `host` proxy is one object for every host: use the real one
        host = ctx_host.get()
    cached = vars(host).get(_HOST_ATTR)
    if cached is None:
        cached = from_data(_host_data(host))
        vars(host)[_HOST_ATTR] = cached
    return cached


def _host_data(host: Any) -> dict[str, Any]:
    data = host.data.dict() if hasattr(host.data, "dict") else dict(host.data)
    return data


def api_key(s: Settings) -> str | None:
    """vllm_api_key, or the content of vllm_api_key_file (a file on the deploying machine), or None.

    Read when the vLLM step needs it (not in from_data: `gpu-llm plan` must not need the file); a missing,
    unreadable or malformed file is a SettingsError naming vllm_api_key_file.
    """
    if s.vllm_api_key:
        return s.vllm_api_key
    if not s.vllm_api_key_file:
        return None
    path = Path(s.vllm_api_key_file).expanduser()
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise SettingsError([("vllm_api_key_file", f"vllm_api_key_file: cannot read {str(path)!r} "
                                                    f"({exc.strerror}); it must be a readable file holding the key")])
    if len(key) < 8 or any(c.isspace() for c in key):
        raise SettingsError([("vllm_api_key_file", f"vllm_api_key_file: {str(path)!r} must hold one key of at "
                                                    "least 8 non-space characters")])
    return key


def gateway_tls_pem(s: Settings) -> str | None:
    """gateway_tls_cert's certificate(s) then gateway_tls_key's key, as one PEM (what HAProxy's `crt` loads), or None
    without HTTPS. Both files are on the deploying machine; they must load as a pair (ssl checks the key matches the
    certificate), else a SettingsError naming the setting."""
    if not (s.gateway_tls_cert and s.gateway_tls_key):
        return None
    import ssl

    texts = {}
    for key, kind in (("gateway_tls_cert", "CERTIFICATE"), ("gateway_tls_key", "PRIVATE KEY")):
        path = Path(getattr(s, key)).expanduser()
        try:
            texts[key] = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError([(key, f"{key}: cannot read {str(path)!r} ({getattr(exc, 'strerror', exc)}); it must "
                                       f"be a readable PEM file")])
        if f"-----BEGIN {kind}" not in texts[key] and not (kind == "PRIVATE KEY" and " PRIVATE KEY-----" in texts[key]):
            raise SettingsError([(key, f"{key}: {str(path)!r} holds no PEM {kind.lower()} ('-----BEGIN {kind}')")])
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(Path(s.gateway_tls_cert).expanduser(),
                                                                 Path(s.gateway_tls_key).expanduser())
    except ssl.SSLError as exc:
        why = exc.reason or exc
        raise SettingsError([("gateway_tls_key", f"gateway_tls_key does not load with gateway_tls_cert ({why}): it "
                                                 "must be that certificate's private key, unencrypted PEM")])
    cert, key = texts["gateway_tls_cert"], texts["gateway_tls_key"]
    return cert.rstrip("\n") + "\n" + key.rstrip("\n") + "\n"


def parse_value(raw: str) -> Any:
    """Parse a KEY=VALUE string value exactly as `pyinfra --data` does: true/false, ints, JSON, else the string.

    Same rules as pyinfra_cli.util.parse_cli_arg, written out because importing pyinfra_cli monkey-patches the
    whole process with gevent (tests/unit/test_settings.py compares the two).
    """
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return json.loads(raw)
    except ValueError:
        return raw


# ---- README table ----------------------------------------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def _cell(text: str) -> str:
    """Text for a Markdown table cell: `|` escaped everywhere, `<` outside `code` spans (else it reads as HTML)."""
    parts = text.replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def markdown_table() -> str:
    """The README's settings table: one row per setting, in declaration order, under a row per section."""
    lines = ["| setting | default | allowed values | what it does |", "|---|---|---|---|"]
    current = None
    for f in FIELDS:
        if section(f.name) != current:
            current = section(f.name)
            lines.append(f"| **{current}** | | | |")
        default = json.dumps(_default(f))
        lines.append(f"| `{f.name}` | {_cell(f'`{default}`')} | {_cell(f.metadata['check'].allowed)} "
                     f"| {_cell(f.metadata['doc'])} |")
    return "\n".join(lines) + "\n"


def readme_table(text: str) -> str:
    """What stands between the settings markers of a README's text; ValueError if they are missing."""
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 or end < begin:
        raise ValueError(f"no {BEGIN} ... {END} markers (in this order) to hold the settings table")
    return text[begin + len(BEGIN):end].strip("\n") + "\n"


def with_table(text: str, table: str) -> str:
    """`text` with the block between the settings markers replaced by `table`."""
    readme_table(text)  # the markers are there
    begin, end = text.find(BEGIN) + len(BEGIN), text.find(END)
    return text[:begin] + "\n" + table.strip("\n") + "\n" + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu_llm.settings",
                                     description="Print the settings table, or write/check it in the README.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write-readme", nargs="?", const=README, type=Path, metavar="PATH",
                      help=f"rewrite the table between the markers in PATH (default {README})")
    mode.add_argument("--check", nargs="?", const=README, type=Path, metavar="PATH",
                      help="exit 1 if the table in PATH (default the README) differs from the declaration")
    args = parser.parse_args(argv)
    table = markdown_table()
    path = args.write_readme or args.check
    if path is None:
        sys.stdout.write(table)
        return 0
    try:
        text = path.read_text()
        current = readme_table(text)
    except (OSError, ValueError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if current == table:
            return 0
        diff = list(difflib.unified_diff(current.splitlines(), table.splitlines(), "README", "gpu_llm/settings.py",
                                         lineterm="", n=0))
        print(f"{path}: the settings table differs from gpu_llm/settings.py ({sum(1 for d in diff if d[:1] in '+-') - 2} "
              "lines); run `python -m gpu_llm.settings --write-readme`", file=sys.stderr)
        print("\n".join(diff[:40] + (["..."] if len(diff) > 40 else [])), file=sys.stderr)
        return 1
    if current != table:
        path.write_text(with_table(text, table))
        print(f"{path}: settings table written")
    else:
        print(f"{path}: settings table already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
