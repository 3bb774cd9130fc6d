"""Preflight deploy: refuse hosts gpu-llm cannot provision, before anything changes."""

from __future__ import annotations

from functools import lru_cache

from pyinfra import logger
from pyinfra.api import deploy

from gpu_llm.defaults import DEFAULTS
from gpu_llm.deploys import host_settings
from gpu_llm.operations import nvidia as nvidia_ops
from gpu_llm.operations import preflight as preflight_ops
from gpu_llm.plan import ServeConfig, gpus_needed, required_cuda
from gpu_llm.plan.types import QWEN3_32B_AWQ

GIB = 1024**3
SERVICE_HOST_GIB = 2.0  # a host without the GPU stack holds venvs (vllm-router: ~60 MiB) and a few packages


@lru_cache(maxsize=None)
def hub_repo_gib(repo: str, revision: str, endpoint: str, token: str | None) -> float | None:
    """Size of a model snapshot from the hub's file list, asked from the deploying machine; None if unreachable."""
    from huggingface_hub import HfApi  # only needed for a non-default model

    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(repo, revision=revision, files_metadata=True)
    except Exception as e:  # noqa: BLE001 - any hub failure only weakens the disk check, it must not stop deploys
        logger.warning(f"preflight: could not size {repo}@{revision} on {endpoint} ({e.__class__.__name__}: {e}); "
                       "checking free disk for the image only")
        return None
    return sum(s.size or 0 for s in info.siblings or []) / GIB


def model_gib(settings) -> float:
    """Disk the model snapshot needs: the known size of the default model, else the hub's file sizes."""
    if settings.model_repo == DEFAULTS["model_repo"]:
        return QWEN3_32B_AWQ.disk_gib
    return hub_repo_gib(settings.model_repo, settings.model_revision, settings.hf_endpoint, settings.hf_token) or 0.0


@deploy("Check the host (preflight)")
def preflight() -> None:
    s = host_settings()
    preflight_ops.check(
        name="Check the host can run gpu-llm",
        supported_os=list(s.preflight_supported_os),
        required_gib=round(model_gib(s) + s.preflight_image_gib, 1),
        require_gpu=s.preflight_require_gpu,
        gpus_needed=gpus_needed(ServeConfig.from_settings(s)),
    )
    if s.nvidia_driver_install:  # a driver the nvidia step would refuse is refused here, before any change
        nvidia_ops.driver_check(name="Check the host's NVIDIA driver can be kept or replaced",
                                branch=s.nvidia_driver_branch, version=s.nvidia_driver_version,
                                open_modules=s.nvidia_driver_open, replace=s.nvidia_driver_replace,
                                required_cuda=required_cuda(ServeConfig.from_settings(s)),
                                source=s.nvidia_driver_source)
    # the one repair preflight makes, after every check passed: apt cannot install anything until it is done
    preflight_ops.dpkg_finished(name="Finish an interrupted dpkg run")


@deploy("Check the host (preflight, no GPU stack)")
def service_preflight() -> None:
    """Hosts that get no GPU stack (only in group `gateways`): OS, architecture, root and some free disk, checked
    before anything changes on them. GPU hosts run preflight() instead."""
    from gpu_llm.deploys.gateway import gpu_host

    if gpu_host():
        return
    s = host_settings()
    preflight_ops.check(name="Check the host can run gpu-llm's services", supported_os=list(s.preflight_supported_os),
                        required_gib=SERVICE_HOST_GIB, require_gpu=False, gpus_needed=(0, ""),
                        disk_for="venvs and packages")
    preflight_ops.dpkg_finished(name="Finish an interrupted dpkg run")
