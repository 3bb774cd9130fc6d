"""vLLM: chat template, API-key env files, containers (vllm()), then a health + smoke check (vllm_verify())."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import HiddenValue, deploy

from gpu_llm import settings
from gpu_llm.deploys import managed_paths
from gpu_llm.deploys.model import verify_script_path
from gpu_llm.operations import files as gpu_files
from gpu_llm.operations import vllm as vllm_ops
from gpu_llm.settings import SettingsError

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def api_key(s: Any) -> str | None:
    """vllm_api_key, or the content of vllm_api_key_file (a file on the deploying machine), or None."""
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


def paths(s: Any) -> tuple[str, ...]:
    """The chat template and each configured instance's env file."""
    names = [i["name"] for i in s.vllm_instances] if s.vllm_instances else [s.vllm_container_name]
    return (template_path(s), *(vllm_ops.env_file_path(s.vllm_config_dir, n) for n in names))


def template_path(s: Any) -> str:
    """Where the chat template lands on the host."""
    return f"{s.vllm_config_dir}/{s.vllm_chat_template}"


@deploy("Run vLLM")
def vllm() -> None:
    s = settings.for_host(host)
    template = (TEMPLATES / s.vllm_chat_template).read_bytes()
    key = api_key(s)
    batch = managed_paths(s)  # every deploy's files: their state is read in one command
    put = gpu_files.put(name="Install the chat template", content=template, dest=template_path(s),
                        mode="644", batch=batch)
    vllm_ops.instances(
        name="Run the vLLM containers",
        settings=s,
        template_sha256=hashlib.sha256(template).hexdigest(),
        api_key=HiddenValue(key) if key else None,
        template_restored=lambda: put.changed,
        batch=batch,
    )


@deploy("Verify the vLLM endpoints")
def vllm_verify() -> None:
    s = settings.for_host(host)
    vllm_ops.verified(name="Verify every vLLM endpoint", settings=s, python=f"{s.hf_venv}/bin/python",
                      script=verify_script_path(s))
