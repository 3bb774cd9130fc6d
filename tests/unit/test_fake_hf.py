"""fake_hf serves Qwen/Qwen3-32B-AWQ well enough for huggingface_hub: snapshot, metadata, tokens, cut-and-resume."""

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

STANDINS = Path(__file__).resolve().parents[1] / "testbed" / "standins"
SCRIPT = STANDINS / "fake_hf.py"
REPO_DIR = STANDINS / "hf_repo"
REPO = "Qwen/Qwen3-32B-AWQ"
# The file list of huggingface.co/Qwen/Qwen3-32B-AWQ (main).
REAL_FILES = {
    ".gitattributes", "LICENSE", "README.md", "config.json", "generation_config.json", "merges.txt",
    "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors", "model-00003-of-00004.safetensors",
    "model-00004-of-00004.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
    "vocab.json",
}
SHARD = "model-00002-of-00004.safetensors"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A running fake_hf subprocess and its request log."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "requests.jsonl"
        cmd = [sys.executable, str(SCRIPT), "--port", str(self.port), "--log", str(self.log_path), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        banner = self.proc.stdout.readline()
        assert "serving Qwen/Qwen3-32B-AWQ@" in banner, banner
        self.sha = banner.split("@")[1].split()[0]

    def log(self) -> list[dict]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def start(tmp_path: Path) -> Iterator:
    servers: list[Server] = []

    def _start(*extra: str) -> Server:
        servers.append(Server(tmp_path, *extra))
        return servers[-1]

    yield _start
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def isolated_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user token, cache or progress bars leak in."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def safetensors_header(path: Path) -> dict:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    end = max(t["data_offsets"][1] for name, t in header.items() if name != "__metadata__")
    assert len(raw) == 8 + length + end, f"{path.name}: size does not match its header"
    return header


def test_snapshot_download_fetches_every_file_with_matching_hashes(start, tmp_path: Path) -> None:
    server = start()
    local = Path(snapshot_download(REPO, revision="main", endpoint=server.url, local_dir=tmp_path / "model"))
    got = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file() and ".cache" not in p.parts}
    assert got == REAL_FILES

    info = HfApi(endpoint=server.url).model_info(REPO, revision="main", files_metadata=True)
    assert info.sha == server.sha
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == REAL_FILES
    for name in REAL_FILES:
        assert (local / name).stat().st_size == siblings[name].size, name
        if siblings[name].lfs is not None:
            assert sha256(local / name) == siblings[name].lfs.sha256, name
        elif (REPO_DIR / name).is_file():
            assert (local / name).read_bytes() == (REPO_DIR / name).read_bytes(), name
    assert {n for n, s in siblings.items() if s.lfs} == {n for n in REAL_FILES if n.endswith(".safetensors")} | {
        "tokenizer.json"
    }

    index = json.loads((local / "model.safetensors.index.json").read_text())
    for tensor, shard in index["weight_map"].items():
        assert tensor in safetensors_header(local / shard)
    assert json.loads((local / "config.json").read_text())["quantization_config"]["quant_method"] == "awq"


def test_revisions_resolve_to_the_commit_and_unknown_ones_fail(start, tmp_path: Path) -> None:
    server = start()
    path = hf_hub_download(REPO, "config.json", revision=server.sha, endpoint=server.url, cache_dir=tmp_path / "c")
    assert f"snapshots/{server.sha}/" in path
    with pytest.raises(RevisionNotFoundError):
        HfApi(endpoint=server.url).model_info(REPO, revision="v9-nonexistent")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=server.url).model_info("Qwen/Nope")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "model.bin", endpoint=server.url, cache_dir=tmp_path / "c")


def test_lfs_metadata_has_linked_etag_and_no_xet(start) -> None:
    server = start()
    meta = get_hf_file_metadata(hf_hub_url(REPO, SHARD, revision="main", endpoint=server.url), endpoint=server.url)
    assert meta.commit_hash == server.sha
    assert meta.xet_file_data is None
    assert len(meta.etag) == 64  # LFS: the sha256, which huggingface_hub checks a local file against
    head = requests.head(hf_hub_url(REPO, SHARD, endpoint=server.url), timeout=5)
    assert int(head.headers["X-Linked-Size"]) == meta.size
    assert not any(h.lower().startswith("x-xet") for h in head.headers)


def test_ranges_are_served_as_206(start) -> None:
    server = start()
    url = hf_hub_url(REPO, "config.json", endpoint=server.url)
    whole = requests.get(url, timeout=5).content
    part = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=5)
    assert part.status_code == 206
    assert part.content == whole[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(whole)}"
    assert requests.get(url, headers={"Range": f"bytes={len(whole)}-"}, timeout=5).status_code == 416


def test_token_is_required_when_configured(start, tmp_path: Path) -> None:
    server = start("--require-token", "hf_secret")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download(REPO, endpoint=server.url, local_dir=tmp_path / "denied")
    with pytest.raises(HfHubHTTPError) as wrong:
        snapshot_download(REPO, endpoint=server.url, local_dir=tmp_path / "wrong", token="hf_wrong")
    assert wrong.value.response.status_code == 401
    local = Path(snapshot_download(REPO, endpoint=server.url, local_dir=tmp_path / "ok", token="hf_secret"))
    assert (local / "config.json").is_file()
    log = server.log()
    assert any(e["status"] == 401 for e in log)
    ok = [e for e in log if e["status"] in (200, 206)]
    assert ok and all(e["auth"] for e in ok)
    assert "hf_secret" not in server.log_path.read_text()


def shard_sha256(server: Server) -> str:
    info = HfApi(endpoint=server.url).model_info(REPO, files_metadata=True)
    return next(s.lfs.sha256 for s in info.siblings if s.rfilename == SHARD)


def shard_gets(server: Server) -> list[dict]:
    return [e for e in server.log() if e["method"] == "GET" and e["path"].endswith(SHARD)]


def test_a_cut_transfer_is_resumed_with_a_range_request(start, tmp_path: Path) -> None:
    # huggingface_hub keeps only whole 10 MiB reads of a broken GET: cut past the first one to see a resume.
    cut = 12_000_000
    server = start("--shard-mib", "16", "--cut-file", SHARD, "--cut-after", str(cut))
    path = Path(hf_hub_download(REPO, SHARD, endpoint=server.url, local_dir=tmp_path / "m"))
    assert path.stat().st_size > 16 * 2**20
    assert sha256(path) == shard_sha256(server)
    gets = shard_gets(server)
    assert len(gets) == 2
    assert gets[0]["cut"] and gets[0]["bytes"] == cut and gets[0]["range"] is None
    resumed_from = int(gets[1]["range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_from <= cut
    assert gets[1]["status"] == 206 and not gets[1]["cut"] and gets[1]["bytes"] == path.stat().st_size - resumed_from


def test_a_persistent_cut_fails_the_first_call_and_a_rerun_completes(start, tmp_path: Path) -> None:
    # huggingface_hub 2.x retries a broken GET 5 times before raising: 6 cuts outlast one call.
    server = start("--cut-file", SHARD, "--cut-after", "500000", "--cut-times", "6")
    with pytest.raises(Exception, match="peer closed connection"):
        hf_hub_download(REPO, SHARD, endpoint=server.url, local_dir=tmp_path / "m")
    assert not (tmp_path / "m" / SHARD).exists()
    path = Path(hf_hub_download(REPO, SHARD, endpoint=server.url, local_dir=tmp_path / "m"))
    assert sha256(path) == shard_sha256(server)
    assert [e["cut"] for e in shard_gets(server)] == [True] * 6 + [False]

    # Re-arm over the control endpoint: the next download is cut once more and still completes.
    armed = requests.post(f"{server.url}/_fake/arm", json={"times": 1, "after": 2000000}, timeout=5).json()
    assert armed == {"file": SHARD, "after": 2000000, "remaining": 1}
    hf_hub_download(REPO, SHARD, endpoint=server.url, local_dir=tmp_path / "m", force_download=True)
    assert [(e["cut"], e["bytes"]) for e in shard_gets(server)[7:]] == [(True, 2000000), (False, path.stat().st_size)]
    assert sha256(path) == shard_sha256(server)


@pytest.mark.skipif(not (Path(sys.executable).parent / "hf").exists(), reason="no `hf` CLI next to this python")
def test_hf_cli_downloads_through_hf_endpoint(start, tmp_path: Path) -> None:
    server = start()
    env = {**os.environ, "HF_ENDPOINT": server.url}
    cli = str(Path(sys.executable).parent / "hf")
    subprocess.run([cli, "download", REPO, "--local-dir", str(tmp_path / "cli")], env=env, check=True,
                   capture_output=True, timeout=120)
    assert {p.name for p in (tmp_path / "cli").iterdir() if p.is_file()} == REAL_FILES


def test_sighup_rearms_the_cut(start) -> None:
    server = start("--cut-file", "config.json", "--cut-after", "100")
    url = hf_hub_url(REPO, "config.json", endpoint=server.url)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(url, timeout=5).content  # noqa: B018 -- reading the body hits the cut
    assert len(requests.get(url, timeout=5).content) > 100
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while requests.get(f"{server.url}/_fake/state", timeout=5).json()["remaining"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(url, timeout=5).content  # noqa: B018



def test_a_request_is_logged_before_its_response_arrives(tmp_path: Path, start) -> None:
    """Tests read the log right after a response (e2e test_4 probes a 401, then counts the log's lines).

    The log is a FIFO nobody reads yet, so the server blocks in its log write: no answer may arrive until
    the line is read."""
    os.mkfifo(tmp_path / "requests.jsonl")
    server = start("--require-token", "hf_secret")
    answers: list[int] = []
    probe = threading.Thread(
        target=lambda: answers.append(requests.get(f"{server.url}/api/models/{REPO}", timeout=30).status_code))
    probe.start()
    time.sleep(1.5)
    answered_early = list(answers)
    with open(tmp_path / "requests.jsonl", encoding="utf-8") as fifo:
        entry = json.loads(fifo.readline())
    probe.join(timeout=30)
    assert answered_early == [], "the response arrived before the request was logged"
    assert answers == [401] and entry["status"] == 401 and entry["auth"] is False
