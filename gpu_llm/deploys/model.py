"""Model snapshot: start its download early in the background, join it before vLLM needs it.

deploy.py calls model_download_start() right after preflight (the download runs in a transient systemd
unit while the driver, Docker and the toolkit are installed) and model_download_wait() before vLLM.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra.api import HiddenValue, deploy

from gpu_llm.deploys import host_settings
from gpu_llm.layout import DOWNLOAD_UNIT, LOG_DIR, download_script_path, token_path, verify_script_path
from gpu_llm.operations import files as gpu_files
from gpu_llm.operations import model as model_ops
from gpu_llm.operations import packages
from gpu_llm.settings import Settings

_PACKAGE = Path(__file__).resolve().parents[1]
DOWNLOAD_SCRIPT = _PACKAGE / "remote" / "download.py"
VERIFY_SCRIPT = _PACKAGE / "verify.py"
UNIT = DOWNLOAD_UNIT


def download_of(s: Settings) -> model_ops.Download:
    return model_ops.Download(
        repo=s.model_repo,
        revision=s.model_revision,
        model_dir=s.model_dir,
        python=f"{s.hf_venv}/bin/python",
        script=download_script_path(s),
        unit=DOWNLOAD_UNIT,
        log_file=f"{LOG_DIR}/model-download.log",
        endpoint=s.hf_endpoint,
        token_file=token_path(s) if s.hf_token else None,
        max_workers=s.hf_max_workers,
        timeout_s=s.hf_download_timeout,
        user=s.model_owner,
        transfer=s.hf_transfer,
    )


@deploy("Start the model download")
def model_download_start() -> None:
    s = host_settings()
    packages.packages(name="Install python3-venv for the hf venv", packages=["python3-venv"])
    model_ops.hf_venv(
        name="Install huggingface-hub and requests into the hf venv",
        path=s.hf_venv, requirements=[s.hf_hub_requirement, "requests"], pip_args=s.hf_pip_args,
    )
    gpu_files.put(name="Upload the model download script", content=DOWNLOAD_SCRIPT.read_bytes(),
                  dest=download_script_path(s), mode="644")
    gpu_files.put(name="Upload the endpoint verify script", content=VERIFY_SCRIPT.read_bytes(),
                  dest=verify_script_path(s), mode="644")
    gpu_files.directory(name="Create the gpu-llm config directory", path=s.vllm_config_dir, mode="755")
    gpu_files.directory(name="Create the gpu-llm log directory", path=LOG_DIR, mode="755")
    gpu_files.directory(name="Create the model directory", path=s.model_dir, user=s.model_owner)
    model_ops.secret_file(
        name="Store the Hugging Face token (0600)" if s.hf_token else "Remove the stored Hugging Face token",
        path=token_path(s), content=HiddenValue(s.hf_token) if s.hf_token else None, user=s.model_owner,
    )
    model_ops.download_started(name="Start downloading the model in the background", d=download_of(s))


@deploy("Wait for the model download")
def model_download_wait() -> None:
    s = host_settings()
    model_ops.download_joined(name="Wait for the model download and verify it", d=download_of(s))
