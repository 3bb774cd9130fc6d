"""Typed, validated view of host data: every problem is reported before any host is touched."""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from gpu_llm.defaults import DEFAULTS
from gpu_llm.plan.types import QWEN3_32B_AWQ
from gpu_llm.remote.download import TRANSFERS

# Host data keys starting with these belong to us: an unknown one is a typo, not someone else's key.
OUR_PREFIXES = ("preflight_", "nvidia_", "cuda_", "docker_", "container_toolkit_", "model_", "hf_", "vllm_")

PROFILES = ("auto", "balanced", "max-context")
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


# ---- validators: each returns the (normalised) value or raises _Invalid("what is allowed") ----------


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise _Invalid("true or false")


def _int(lo: int | None = None, hi: int | None = None, allow_none: bool = False) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if v is None and allow_none:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Invalid(_range_text("an integer", lo, hi, allow_none))
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _Invalid(_range_text("an integer", lo, hi, allow_none))
        return v

    return check


def _range_text(kind: str, lo: Any, hi: Any, allow_none: bool) -> str:
    text = kind
    if lo is not None and hi is not None:
        text += f" from {lo} to {hi}"
    elif lo is not None:
        text += f" >= {lo}"
    return text + (" or null (derive from the GPUs)" if allow_none else "")


def _utilization(v: Any) -> float | None:
    allowed = "a number greater than 0.05 and at most 0.99, or null (profile value)"
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.05 < v <= 0.99:
        raise _Invalid(allowed)
    return float(v)


def _choice(*choices: Any) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if v in choices and type(v) is type(next(c for c in choices if c == v)):
            return v
        raise _Invalid("one of " + ", ".join(repr(c) if c is not None else "null" for c in choices))

    return check


def _str(pattern: str | None = None, allowed: str = "a non-empty string", allow_none: bool = False):
    def check(v: Any) -> Any:
        if v is None and allow_none:
            return None
        if not isinstance(v, str) or not v or (pattern and not re.fullmatch(pattern, v)):
            raise _Invalid(allowed + (" or null" if allow_none else ""))
        return v

    return check


def _abs_path(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/") or "\n" in v:
        raise _Invalid("an absolute path (starting with /)")
    return v.rstrip("/") or "/"


def _url(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"https?://[^\s/]+(/\S*)?", v):
        raise _Invalid("an http:// or https:// URL")
    return v.rstrip("/")


def _list_of_str(v: Any) -> list[str]:
    if not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
        raise _Invalid("a list of strings")
    return list(v)


def _dict_of_str(v: Any) -> dict[str, str]:
    if not isinstance(v, Mapping) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise _Invalid('a mapping of strings to strings, e.g. {"NCCL_DEBUG": "WARN"}')
    return dict(v)


def _dict(v: Any) -> dict:
    if not isinstance(v, Mapping):
        raise _Invalid("a mapping")
    return dict(v)


def _image(v: Any) -> str:
    allowed = '"auto" or an image reference with a tag, e.g. "vllm/vllm-openai:v0.10.1"'
    if v == "auto":
        return v
    if not isinstance(v, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._/:-]*(@sha256:[0-9a-f]{64})?", v):
        raise _Invalid(allowed)
    name = v.split("@", 1)[0]
    if ":" not in name.rsplit("/", 1)[-1] and "@" not in v:
        raise _Invalid(allowed + " (a reference without a tag would float to :latest)")
    return v


def _tp(v: Any) -> Any:
    allowed = '"auto" or one of ' + ", ".join(map(str, TP_SIZES)) + " (must divide Qwen3-32B's 64 attention and 8 KV heads)"
    if v == "auto":
        return v
    if isinstance(v, bool) or not isinstance(v, int) or v not in TP_SIZES:
        raise _Invalid(allowed)
    return v


def _max_model_len(v: Any) -> int:
    limit = QWEN3_32B_AWQ.max_position_embeddings
    if isinstance(v, bool) or not isinstance(v, int) or not 256 <= v <= limit:
        raise _Invalid(f"an integer from 256 to {limit} (Qwen3-32B's context without rope scaling)")
    return v


def _ip(v: Any) -> str:
    try:
        return str(ipaddress.ip_address(v))
    except (ValueError, TypeError):
        raise _Invalid('an IP address, e.g. "0.0.0.0" or "10.0.0.5"') from None


def _instances(v: Any) -> list[dict] | None:
    allowed = ('null or a list of {"name": str, "port": int, "gpus": [int, ...]} with distinct names, ports and GPUs; '
               'a name is a Docker container name: 2+ letters, digits, _ . -')
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


# Docker's container-name rule (moby daemon/names: ^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$): at least 2 characters.
_NAME = r"[a-zA-Z0-9][a-zA-Z0-9_.-]+"
_VERSION3 = r"\d+\.\d+(\.\d+)?"

SCHEMA: dict[str, Callable[[Any], Any]] = {
    "preflight_supported_os": _list_of_str,
    "preflight_image_gib": _int(0, 1000),
    "preflight_require_gpu": _bool,
    "nvidia_driver_install": _bool,
    "nvidia_driver_branch": _str(r"\d{3}", 'a driver branch like "570"'),
    "nvidia_driver_version": _str(_VERSION3, 'a driver version like "570.153.02"'),
    "nvidia_driver_open": _bool,
    "nvidia_driver_replace": _bool,
    "nvidia_driver_reboot": _bool,
    "nvidia_driver_reboot_timeout": _int(30, 7200),
    "nvidia_driver_blacklist_nouveau": _bool,
    "nvidia_cuda_repo_url": _url,
    "nvidia_cuda_keyring_version": _str(r"[0-9][0-9A-Za-z.+~-]*", 'a package version like "1.1-1"'),
    "cuda_toolkit_install": _bool,
    "cuda_toolkit_version": _str(r"\d+\.\d+", 'a CUDA release like "12.8"'),
    "docker_package_source": _choice("docker", "ubuntu"),
    "docker_repo_url": _url,
    "docker_daemon_config": _dict,
    "container_toolkit_repo_url": _url,
    "container_toolkit_version": _str(r"[0-9][0-9A-Za-z.+~-]*", 'a package version like "1.17.8-1"', allow_none=True),
    "model_repo": _str(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*", 'a Hugging Face repo id like "Qwen/Qwen3-32B-AWQ"'),
    "model_revision": _str(r"[A-Za-z0-9][A-Za-z0-9_./-]*", "a commit, branch or tag name"),
    "model_dir": _abs_path,
    "model_owner": _str(r"[a-z_][a-z0-9_-]*", "a user name"),
    "hf_venv": _abs_path,
    "hf_hub_requirement": _str(),
    "hf_pip_args": _list_of_str,
    "hf_endpoint": _url,
    "hf_token": _str(r"\S+", "a token string", allow_none=True),
    "hf_max_workers": _int(1, 64),
    "hf_transfer": _choice(*TRANSFERS),
    "hf_download_timeout": _int(60),
    "vllm_image": _image,
    "vllm_version": _str(r"\d+\.\d+\.\d+", 'a vLLM release like "0.10.1"', allow_none=True),
    "vllm_profile": _choice(*PROFILES),
    "vllm_tensor_parallel_size": _tp,
    "vllm_gpu_memory_utilization": _utilization,
    "vllm_max_model_len": _max_model_len,
    "vllm_max_num_batched_tokens": _int(256, 1048576, allow_none=True),
    "vllm_max_num_seqs": _int(1, 4096, allow_none=True),
    "vllm_block_size": _choice(8, 16, 32, None),
    "vllm_enable_prefix_caching": _choice(True, False, None),
    "vllm_enable_chunked_prefill": _choice(True, False, None),
    "vllm_dtype": _choice("auto", "half", "float16", "bfloat16"),
    "vllm_quantization": _choice("auto", "awq", "awq_marlin", None),
    "vllm_kv_cache_dtype": _choice("auto", "fp8", "fp8_e4m3", "fp8_e5m2"),
    "vllm_served_model_name": _str(r"[A-Za-z0-9][A-Za-z0-9_./:-]*", "a model name of letters, digits, . _ / : -"),
    "vllm_container_name": _str(_NAME, "a Docker container name: 2+ letters, digits, _ . -"),
    "vllm_port": _int(1, 65535),
    "vllm_bind": _ip,
    "vllm_api_key": _str(r"\S{8,}", "a key of at least 8 non-space characters", allow_none=True),
    "vllm_api_key_file": _str(r"\S+", "a path to a file holding the key", allow_none=True),
    "vllm_instances": _instances,
    "vllm_extra_args": _list_of_str,
    "vllm_env": _dict_of_str,
    "vllm_restart_policy": _choice("no", "always", "unless-stopped", "on-failure"),
    "vllm_cpuset_cpus": _str(r"\d+(-\d+)?(,\d+(-\d+)?)*", 'a CPU list like "0-55" or "0,2,4"', allow_none=True),
    "vllm_ulimits": _dict_of_str,
    "vllm_config_dir": _abs_path,
    "vllm_chat_template": _str(r"[A-Za-z0-9_.-]+\.jinja", "a .jinja file name in templates/"),
    "vllm_health_timeout": _int(10, 86400),
    "vllm_smoke_test": _bool,
}

assert set(SCHEMA) == set(DEFAULTS), set(SCHEMA) ^ set(DEFAULTS)  # every default has a validator

Settings = dataclasses.make_dataclass("Settings", [(k, Any) for k in DEFAULTS], frozen=True)
Settings.__doc__ = "Validated settings; one attribute per key of gpu_llm.defaults.DEFAULTS."


def _cross_checks(s: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    if not s["nvidia_driver_version"].startswith(s["nvidia_driver_branch"] + "."):
        problems.append(("nvidia_driver_version", f"nvidia_driver_version={s['nvidia_driver_version']!r} is not in "
                         f"branch nvidia_driver_branch={s['nvidia_driver_branch']!r}: set both to the same branch"))
    if s["vllm_api_key"] and s["vllm_api_key_file"]:
        problems.append(("vllm_api_key", "set vllm_api_key or vllm_api_key_file, not both"))
    if s["vllm_extra_args"]:
        for arg in s["vllm_extra_args"]:
            if arg.startswith("-") and not arg.startswith("--"):
                problems.append(("vllm_extra_args", f"vllm_extra_args item {arg!r}: use the long --flag form"))
    return problems


def from_data(data: Mapping[str, Any]) -> Any:
    """Build Settings from host data (defaults filled in); raise SettingsError naming every bad key."""
    problems: list[tuple[str, str]] = []
    for key in data:
        if isinstance(key, str) and key.startswith(OUR_PREFIXES) and key not in DEFAULTS:
            close = difflib.get_close_matches(key, DEFAULTS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append((key, f"unknown setting {key!r}{hint} (gpu_llm/defaults.py lists every setting)"))
    values: dict[str, Any] = {}
    for key, check in SCHEMA.items():
        raw = data[key] if key in data else DEFAULTS[key]
        try:
            values[key] = check(raw)
        except _Invalid as exc:
            problems.append((key, f"{key}={raw!r} is invalid: expected {exc}"))
    if not problems:
        problems = _cross_checks(values)
    if problems:
        raise SettingsError(problems)
    return Settings(**values)


Settings.from_data = staticmethod(from_data)


def for_host(host: Any) -> Any:
    """Settings of a pyinfra host (its data: --data > host > groups > group_data/all.py > defaults)."""
    return from_data(_host_data(host))


def _host_data(host: Any) -> dict[str, Any]:
    data = host.data.dict() if hasattr(host.data, "dict") else dict(host.data)
    return data


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
