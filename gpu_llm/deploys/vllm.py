"""vLLM: chat template, API-key env files, containers (vllm()), then a health + smoke check (vllm_verify())."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pyinfra.api import HiddenValue, deploy

from gpu_llm.deploys import host_settings
from gpu_llm.layout import template_path, verify_script_path
from gpu_llm.operations import files as gpu_files
from gpu_llm.operations import vllm as vllm_ops
from gpu_llm.plan import ServeConfig
from gpu_llm.settings import api_key

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


@deploy("Run vLLM")
def vllm() -> None:
    s = host_settings()
    template = (TEMPLATES / s.vllm_chat_template).read_bytes()
    key = api_key(s)
    put = gpu_files.put(name="Install the chat template", content=template, dest=template_path(s), mode="644")
    vllm_ops.instances(
        name="Run the vLLM containers",
        config=ServeConfig.from_settings(s),
        template_sha256=hashlib.sha256(template).hexdigest(),
        api_key=HiddenValue(key) if key else None,
        template_restored=lambda: put.changed,
    )


@deploy("Verify the vLLM endpoints")
def vllm_verify() -> None:
    s = host_settings()
    vllm_ops.verified(name="Verify every vLLM endpoint", config=ServeConfig.from_settings(s),
                      python=f"{s.hf_venv}/bin/python", script=verify_script_path(s),
                      health_timeout=s.vllm_health_timeout, smoke_test=s.vllm_smoke_test)
