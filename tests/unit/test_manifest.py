"""Manifest and file-verification logic of gpu_llm/remote/download.py and the ModelSnapshot fact parser."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpu_llm.facts.model import parse_snapshot_output
from gpu_llm.remote import download as dl

COMMIT = "a" * 40
CONFIG = b'{"model_type": "qwen3"}\n'
WEIGHTS = bytes(range(256)) * 64


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def files() -> dict[str, dict]:
    return dl.expected_files([
        SimpleNamespace(rfilename="config.json", size=len(CONFIG), blob_id=git_blob(CONFIG), lfs=None),
        SimpleNamespace(rfilename="model.safetensors", size=134, blob_id="pointer-blob",
                        lfs=SimpleNamespace(size=len(WEIGHTS), sha256=hashlib.sha256(WEIGHTS).hexdigest())),
    ])


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_bytes(CONFIG)
    (tmp_path / "model.safetensors").write_bytes(WEIGHTS)
    return tmp_path


def test_expected_files_takes_lfs_size_and_sha256(files):
    assert files["model.safetensors"] == {"size": len(WEIGHTS), "sha256": hashlib.sha256(WEIGHTS).hexdigest(),
                                          "blob_id": None}
    assert files["config.json"]["sha256"] is None and files["config.json"]["blob_id"] == git_blob(CONFIG)


def test_expected_files_refuses_siblings_without_size():
    with pytest.raises(dl.DownloadError, match="files_metadata"):
        dl.expected_files([SimpleNamespace(rfilename="x", size=None, blob_id=None, lfs=None)])


def test_intact_snapshot_has_no_content_problems(snapshot, files):
    assert dl.content_problems(snapshot, files) == {}


def test_truncated_file_is_detected(snapshot, files):
    (snapshot / "model.safetensors").write_bytes(WEIGHTS[:1000])
    assert dl.content_problems(snapshot, files) == {
        "model.safetensors": f"model.safetensors has 1000 bytes, expected {len(WEIGHTS)}"}


def test_wrong_sha256_of_same_size_is_detected(snapshot, files):
    (snapshot / "model.safetensors").write_bytes(b"\0" * len(WEIGHTS))
    assert "sha256" in dl.content_problems(snapshot, files)["model.safetensors"]


def test_wrong_small_file_is_detected_by_git_blob_id(snapshot, files):
    (snapshot / "config.json").write_bytes(CONFIG.replace(b"qwen3", b"llama"))
    assert "git blob id" in dl.content_problems(snapshot, files)["config.json"]


def test_missing_file_is_detected(snapshot, files):
    (snapshot / "config.json").unlink()
    assert dl.content_problems(snapshot, files) == {"config.json": "config.json is missing"}


def test_incomplete_leftovers_are_found_only_in_hf_state(snapshot):
    state = snapshot / ".cache" / "huggingface" / "download"
    state.mkdir(parents=True)
    (state / "abc.deadbeef.incomplete").write_bytes(b"partial")
    (snapshot / "user-notes.incomplete").write_text("not ours")
    assert dl.incomplete_leftovers(snapshot) == [state / "abc.deadbeef.incomplete"]


def manifest(files, revision="main", commit=COMMIT, repo="Qwen/Qwen3-32B-AWQ"):
    return dl.make_manifest(repo, revision, commit, files)


def sizes_of(files):
    return {name: meta["size"] for name, meta in files.items()}


def test_manifest_complete_at_branch_and_at_pinned_commit(files):
    m = manifest(files)
    assert dl.manifest_problems(m, sizes_of(files), "Qwen/Qwen3-32B-AWQ", "main") == []
    assert dl.manifest_problems(m, sizes_of(files), "Qwen/Qwen3-32B-AWQ", COMMIT) == []


@pytest.mark.parametrize(("repo", "revision", "why"), [
    ("Qwen/Qwen3-32B-AWQ", "b" * 40, "not the pinned"),
    ("Qwen/Qwen3-32B-AWQ", "v1.0", "not 'v1.0'"),
    ("Qwen/Qwen3-8B", "main", "not Qwen/Qwen3-8B"),
])
def test_manifest_for_another_revision_or_repo_is_not_complete(files, repo, revision, why):
    [problem] = dl.manifest_problems(manifest(files), sizes_of(files), repo, revision)
    assert why in problem


def test_manifest_with_truncated_or_missing_file_is_not_complete(files):
    sizes = sizes_of(files)
    sizes["model.safetensors"] -= 1
    del sizes["config.json"]
    assert dl.manifest_problems(manifest(files), sizes, "Qwen/Qwen3-32B-AWQ", "main") == [
        "config.json is missing", f"model.safetensors has {len(WEIGHTS) - 1} bytes, expected {len(WEIGHTS)}"]


def test_no_manifest_is_not_complete():
    assert dl.manifest_problems(None, {}, "Qwen/Qwen3-32B-AWQ", "main") == ["no manifest (download never completed)"]


def test_write_manifest_round_trips_and_leaves_no_temp_file(tmp_path, files):
    m = manifest(files)
    dl.write_manifest(tmp_path, m)
    assert dl.read_manifest(tmp_path) == m
    assert sorted(p.name for p in tmp_path.iterdir()) == [dl.MANIFEST_NAME]


def test_snapshot_fact_output_is_parsed(files):
    m = manifest(files)
    lines = [*json.dumps(m, indent=1).splitlines(), "@@gpu-llm@@", "active", "@@gpu-llm@@",
             f"{len(CONFIG)}\tconfig.json", "7\tsub dir/with space.bin"]
    snap = parse_snapshot_output(lines)
    assert snap.manifest == m and snap.running and snap.commit == COMMIT
    assert snap.sizes == {"config.json": len(CONFIG), "sub dir/with space.bin": 7}
    assert snap.problems("Qwen/Qwen3-32B-AWQ", "main") == [
        "model.safetensors is missing"]


def test_snapshot_fact_without_manifest_or_systemd():
    snap = parse_snapshot_output(["null", "@@gpu-llm@@", "@@gpu-llm@@"])
    assert snap.manifest is None and not snap.running and snap.sizes == {}


def test_snapshot_fact_treats_damaged_manifest_as_absent():
    snap = parse_snapshot_output(['{"repo": "Qwen/Qwen3', "@@gpu-llm@@", "inactive", "@@gpu-llm@@"])
    assert snap.manifest is None and snap.unit_state == "inactive"
