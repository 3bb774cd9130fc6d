"""The planner's input (ServeConfig) and where a container's files live on the host and inside it.

ServeConfig holds every setting value the planner and the container spec read, so neither sees the settings
object. It is built by name from any settings object (`ServeConfig.from_settings`): this package must not import
gpu_llm.settings, which imports gpu_llm.plan.types.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

# In-container paths and port (host paths are mounted here, the host port is published to this one).
CONTAINER_MODEL_ROOT = "/model"
CONTAINER_TEMPLATE_DIR = "/app"
CONTAINER_PORT = 8000
# Without an API key the port is published on loopback only (anyone reaching the host could use it).
LOOPBACK = "127.0.0.1"


def model_container_path(model_dir: str) -> str:
    """Where the model directory is mounted in the container (and what --model names)."""
    return f"{CONTAINER_MODEL_ROOT}/{model_dir.rsplit('/', 1)[-1]}"


def template_host_path(config_dir: str, chat_template: str) -> str:
    """Where the chat template lands on the host."""
    return f"{config_dir}/{chat_template}"


def template_container_path(chat_template: str) -> str:
    """Where the chat template is mounted in the container (and what --chat-template names)."""
    return f"{CONTAINER_TEMPLATE_DIR}/{chat_template}"


def env_file_path(config_dir: str, name: str) -> str:
    """The 0600 env file on the host carrying instance `name`'s API key."""
    return f"{config_dir}/{name}.env"


@dataclass(frozen=True)
class Mount:
    """A read-only bind mount: host path -> container path."""

    host: str
    container: str

    @property
    def volume(self) -> str:
        """docker's -v value."""
        return f"{self.host}:{self.container}:ro"


@dataclass(frozen=True)
class InstanceConfig:
    """One item of vllm_instances: a container on its own port and GPUs."""

    name: str
    port: int
    gpus: tuple[int, ...]
    served_model_name: str | None = None  # None: ServeConfig.vllm_served_model_name


@dataclass(frozen=True)
class ServeConfig:
    """Every setting the planner and the container spec need; attribute names are the settings' own keys
    (so a PlanError's key names the setting to change), plus `keyed`."""

    # vLLM image and engine flags
    vllm_image: str  # "auto" or an image reference with a tag
    vllm_version: str | None  # release inside vllm_image when its tag is not a version
    vllm_profile: str  # "auto" | "balanced" | "max-context" | "throughput"
    vllm_tensor_parallel_size: int | Literal["auto"]
    vllm_gpu_memory_utilization: float | None
    vllm_max_model_len: int | Literal["auto"]
    vllm_max_num_batched_tokens: int | None
    vllm_max_num_seqs: int | None
    vllm_block_size: int | None
    vllm_enable_prefix_caching: bool | None
    vllm_enable_chunked_prefill: bool | None
    vllm_dtype: str
    vllm_quantization: str | None
    vllm_kv_cache_dtype: str
    vllm_extra_args: tuple[str, ...]
    vllm_env: Mapping[str, str]
    # layout over the GPUs, API parsers
    vllm_layout: str  # "auto" | "data-parallel" | "instances" | "tensor-parallel"
    vllm_min_full_sequences: int
    vllm_tool_calls: bool
    vllm_reasoning: bool
    # instances
    vllm_served_model_name: str
    vllm_container_name: str
    vllm_port: int
    vllm_instances: tuple[InstanceConfig, ...] | None  # None: one instance with every GPU
    # the container around it
    vllm_bind: str  # address the API port is published on when an API key is set
    vllm_restart_policy: str
    vllm_cpuset_cpus: str | None
    vllm_ulimits: Mapping[str, str]
    vllm_config_dir: str
    vllm_chat_template: str
    model_dir: str
    # the driver gpu-llm installs: planned for when the GPUs do not say which one runs
    nvidia_driver_version: str
    # vllm_api_key or vllm_api_key_file is set: the instances get an env file with the key
    keyed: bool

    @classmethod
    def from_settings(cls, s: object) -> ServeConfig:
        """The values of a settings object (gpu_llm.settings.Settings, or anything with those attributes)."""
        values = {f.name: getattr(s, f.name) for f in dataclasses.fields(cls) if f.name != "keyed"}
        instances = values["vllm_instances"]
        return cls(**{
            **values,
            "vllm_extra_args": tuple(values["vllm_extra_args"]),
            "vllm_env": dict(values["vllm_env"]),
            "vllm_ulimits": dict(values["vllm_ulimits"]),
            "vllm_instances": None if instances is None else tuple(_instance(i) for i in instances),
            "keyed": bool(getattr(s, "vllm_api_key") or getattr(s, "vllm_api_key_file")),
        })

    @property
    def model_mount(self) -> Mount:
        return Mount(self.model_dir, model_container_path(self.model_dir))

    @property
    def template_mount(self) -> Mount:
        return Mount(template_host_path(self.vllm_config_dir, self.vllm_chat_template),
                     template_container_path(self.vllm_chat_template))


def _instance(item: object) -> InstanceConfig:
    """An InstanceConfig from one vllm_instances item: a mapping (host data) or an object with those attributes."""
    if isinstance(item, InstanceConfig):
        return item
    if isinstance(item, Mapping):
        return InstanceConfig(name=item["name"], port=item["port"], gpus=tuple(item["gpus"]),
                              served_model_name=item.get("served_model_name"))
    return InstanceConfig(name=getattr(item, "name"), port=getattr(item, "port"), gpus=tuple(getattr(item, "gpus")),
                          served_model_name=getattr(item, "served_model_name", None))
