"""gpu_llm.operations.model: when the download starts, joins or is a noop; venv and secret-file decisions."""

from __future__ import annotations

import hashlib
from typing import Any

from contextlib import ExitStack

import pytest
from pyinfra.api import FileUploadCommand, FunctionCommand, HiddenValue
from pyinfra.context import ctx_host, ctx_state

from gpu_llm.facts.files import FileState, FileStates
from gpu_llm.facts.model import ModelSnapshot, SnapshotState, VenvMarker
from gpu_llm.operations import model as ops
from gpu_llm.remote.download import make_manifest
from tests.ops.opkit import FakeHost, FakeState

REPO = "Qwen/Qwen3-32B-AWQ"
COMMIT = "c" * 40
FILES = {"config.json": {"size": 10, "sha256": None}, "model.safetensors": {"size": 1000, "sha256": "ab" * 32}}
TOKEN_FILE = "/etc/gpu-llm/hf-token"


def download(**overrides: Any) -> ops.Download:
    return ops.Download(**{
        "repo": REPO, "revision": "main", "model_dir": "/models/qwen", "python": "/opt/hf/bin/python",
        "script": "/opt/hf/gpu-llm-download.py", "unit": "gpu-llm-model-download.service",
        "log_file": "/var/log/gpu-llm/model-download.log", "endpoint": "https://huggingface.co",
        "token_file": None, "max_workers": 8, "timeout_s": 7200, "user": "root", **overrides})


@pytest.fixture
def fake():
    """fake(facts) makes an opkit FakeHost (facts keyed by fact class) the current pyinfra host while executing."""
    stack = ExitStack()
    stack.enter_context(ctx_state.use(FakeState()))

    def install(facts: dict[Any, Any]) -> FakeHost:
        h = FakeHost({k.__name__: v for k, v in facts.items()})
        stack.enter_context(ctx_host.use(h))
        return h

    with stack:
        yield install


def snapshot(revision="main", sizes=None, unit_state="inactive", manifest=True) -> SnapshotState:
    m = make_manifest(REPO, revision, COMMIT, FILES) if manifest else None
    return SnapshotState(m, {n: f["size"] for n, f in FILES.items()} if sizes is None else sizes, unit_state)


def raw(gen) -> list[Any]:
    return [c if isinstance(c, (FileUploadCommand, FunctionCommand)) else c.get_raw_value() for c in gen]


def test_complete_snapshot_is_a_noop_naming_the_commit(fake):
    h = fake({ModelSnapshot: snapshot()})
    assert raw(ops.download_started._inner(download())) == []
    assert raw(ops.download_joined._inner(download())) == []
    assert h.noops == [f"model {REPO} at {COMMIT} complete in /models/qwen"] * 2


def test_pinned_commit_other_than_manifest_starts_a_download(fake):
    fake({ModelSnapshot: snapshot()})
    [cmd] = raw(ops.download_started._inner(download(revision="d" * 40)))
    assert "systemd-run" in cmd and f"--revision {'d' * 40}" in cmd


def test_truncated_file_starts_a_download(fake):
    fake({ModelSnapshot: snapshot(sizes={"config.json": 10, "model.safetensors": 999})})
    [cmd] = raw(ops.download_started._inner(download()))
    assert "systemd-run" in cmd


def test_running_unit_is_not_started_twice(fake):
    h = fake({ModelSnapshot: snapshot(manifest=False, sizes={}, unit_state="active")})
    assert raw(ops.download_started._inner(download())) == []
    assert "already running" in h.noops[0]
    join = raw(ops.download_joined._inner(download()))
    assert join[0].startswith("/opt/hf/bin/python /opt/hf/gpu-llm-download.py wait")
    assert isinstance(join[1], FunctionCommand)


def test_join_restarts_a_download_a_reboot_or_failure_stopped(fake):
    fake({ModelSnapshot: snapshot(manifest=False, sizes={}, unit_state="")})
    join = raw(ops.download_joined._inner(download()))
    assert "systemd-run" in join[0] and " wait " in join[1]


def test_start_command_passes_token_as_file_and_limits_runtime():
    cmd = ops.start_command(download(token_file=TOKEN_FILE, user="llm")).get_raw_value()
    assert f"--token-file {TOKEN_FILE}" in cmd
    assert "--property=RuntimeMaxSec=7200" in cmd and "--property=User=llm" in cmd
    assert "--setenv=HF_XET_HIGH_PERFORMANCE=1" in cmd
    assert "--property=StandardOutput=truncate:/var/log/gpu-llm/model-download.log" in cmd


def test_venv_with_matching_marker_is_a_noop(fake):
    fake({VenvMarker: "huggingface-hub>=1.0,<3\nrequests\npip-arg --index-url\npip-arg https://m/simple"})
    assert raw(ops.hf_venv._inner("/opt/hf", ["huggingface-hub>=1.0,<3", "requests"],
                                  ["--index-url", "https://m/simple"])) == []


def test_venv_with_other_requirement_reinstalls_and_rewrites_marker(fake):
    fake({VenvMarker: "huggingface-hub>=0.20\nrequests"})
    cmds = raw(ops.hf_venv._inner("/opt/hf", ["huggingface-hub>=1.0,<3", "requests"], []))
    assert cmds[0] == "python3 -m venv /opt/hf"
    assert "'huggingface-hub>=1.0,<3' requests" in cmds[1]
    assert cmds[2].endswith("> /opt/hf/.gpu-llm-requirements")


def test_secret_file_is_created_0600_before_upload_and_token_stays_out_of_commands(fake):
    fake({})
    cmds = raw(ops.secret_file._inner(TOKEN_FILE, HiddenValue("hf_secret"), "llm"))
    assert cmds[0] == f"( umask 077 && touch {TOKEN_FILE} ) && chmod 600 {TOKEN_FILE} && chown llm {TOKEN_FILE}"
    assert isinstance(cmds[1], FileUploadCommand) and cmds[1].src.getvalue() == "hf_secret"
    assert "hf_secret" not in repr(cmds[1])


def test_secret_file_in_place_is_a_noop_and_wrong_mode_is_fixed_without_upload(fake):
    digest = hashlib.sha256(b"hf_secret").hexdigest()
    fake({FileStates: {TOKEN_FILE: FileState("file", 600, "root", "root", digest)}})
    assert raw(ops.secret_file._inner(TOKEN_FILE, HiddenValue("hf_secret"), "root")) == []
    fake({FileStates: {TOKEN_FILE: FileState("file", 644, "root", "root", digest)}})
    [cmd] = raw(ops.secret_file._inner(TOKEN_FILE, HiddenValue("hf_secret"), "root"))
    assert "chmod 600" in cmd


def test_secret_file_without_content_is_removed(fake):
    fake({FileStates: {TOKEN_FILE: FileState("file", 600, "root", "root", "0" * 64)}})
    assert raw(ops.secret_file._inner(TOKEN_FILE, None)) == [f"rm -f {TOKEN_FILE}"]


@pytest.mark.parametrize("transfer", ["resumable", "xet"])
def test_download_unit_passes_hf_transfer(fake, transfer):
    fake({ModelSnapshot: snapshot(manifest=False, sizes={})})
    [cmd] = raw(ops.download_started._inner(download(transfer=transfer)))
    assert f" --transfer {transfer}" in cmd


def test_deploy_hands_hf_transfer_to_the_download():
    from gpu_llm import settings
    from gpu_llm.deploys.model import download_of

    assert download_of(settings.from_data({})).transfer == "resumable"
    assert download_of(settings.from_data({"hf_transfer": "xet"})).transfer == "xet"
    with pytest.raises(settings.SettingsError, match="hf_transfer"):
        settings.from_data({"hf_transfer": "aria2"})
