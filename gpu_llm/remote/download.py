"""Fetch a Hugging Face model snapshot into a directory, verify every file, then write a manifest.

Standalone on purpose: the deploy copies this file to GPU hosts and runs it with the hf venv's python,
so it imports only the standard library (and huggingface_hub and requests, inside `fetch`).

Transfers (--transfer): "xet" leaves every file to snapshot_download (hf_xet on Xet-backed repos, the backend
huggingface-hub's docs call its fastest), but huggingface-hub 2.4 restarts an unfinished file from byte 0 in a new
process (per-process temp files, huggingface_hub#4228), so a reboot or timeout mid-shard loses that shard's bytes.
"resumable" (default) fetches small files with snapshot_download and every LFS file itself with HTTP Range
requests into <dir>/.cache/huggingface/gpu-llm-partial/<sha256>.part, which the next run continues from its size.
Own code for that because no maintained library resumes a partial file across processes against the Hub.

    download.py fetch --repo Qwen/Qwen3-32B-AWQ --revision main --dir /models/qwen [--token-file F]
                      [--transfer resumable|xet]
    download.py wait --unit gpu-llm-model-download.service --dir /models/qwen --repo ... --revision main

The manifest (<dir>/.gpu-llm-manifest.json) is written only after every file matched the hub's metadata
(size for all, sha256 for LFS files, git blob sha1 for the rest); its presence plus matching file sizes is
what "complete" means to the deploy's cheap re-run check (no hashing, no network).
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MANIFEST_NAME = ".gpu-llm-manifest.json"
# snapshot_download(local_dir=...) keeps per-file metadata and partial downloads (*.incomplete) here.
HF_STATE_DIR = Path(".cache") / "huggingface"
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
LOG_TAIL_LINES = 40
PARTIAL_DIR = HF_STATE_DIR / "gpu-llm-partial"  # resumable transfers: <sha256>.part per unfinished LFS file
TRANSFERS = ("resumable", "xet")
MAX_STALLS = 5  # GETs in a row that add no byte before a file is given up (the run fails; the next one resumes)
RESUME_CHUNK = 1 << 20  # read size of resumable GETs: a dropped link loses the read it interrupts (< 1 MiB)
_CHUNK = 8 * 1024 * 1024

FileMeta = dict[str, Any]  # {"size": int, "sha256": str | None, "blob_id": str | None}


class DownloadError(Exception):
    """The snapshot could not be fetched or does not match the hub's metadata; the message says which."""


def log(message: str) -> None:
    print(f"[gpu-llm download] {message}", flush=True)


# ---- pure checks (also imported by the deploy's fact and the unit tests) ---------------------------------------


def is_commit(revision: str) -> bool:
    """A 40-hex revision is a pinned commit; anything else is a branch or tag."""
    return COMMIT_RE.fullmatch(revision) is not None


def expected_files(siblings: Iterable[Any]) -> dict[str, FileMeta]:
    """Hub metadata (model_info(files_metadata=True).siblings) -> {path: {size, sha256, blob_id}}."""
    files: dict[str, FileMeta] = {}
    for sib in siblings:
        lfs = getattr(sib, "lfs", None)
        size = lfs.size if lfs else sib.size
        if size is None:
            raise DownloadError(f"the hub gave no size for {sib.rfilename}: was files_metadata=True requested?")
        files[sib.rfilename] = {
            "size": int(size),
            "sha256": lfs.sha256 if lfs else None,
            "blob_id": None if lfs else sib.blob_id,
        }
    return files


def size_problems(files: Mapping[str, FileMeta], sizes: Mapping[str, int]) -> list[str]:
    """Compare expected sizes with what is on disk (`sizes`: path -> bytes, absent when missing)."""
    problems = []
    for name, meta in sorted(files.items()):
        if name not in sizes:
            problems.append(f"{name} is missing")
        elif sizes[name] != meta["size"]:
            problems.append(f"{name} has {sizes[name]} bytes, expected {meta['size']}")
    return problems


def manifest_problems(manifest: Mapping[str, Any] | None, sizes: Mapping[str, int], repo: str, revision: str) -> list[str]:
    """Why the snapshot described by `manifest` is not a complete copy of repo@revision ([] = complete).

    Cheap by design (sizes and presence only). A branch/tag revision trusts the commit the manifest recorded
    for that same revision name: re-runs do not re-resolve branches (pin a commit to move to a newer one).
    """
    if manifest is None:
        return ["no manifest (download never completed)"]
    if manifest.get("repo") != repo:
        return [f"manifest is for {manifest.get('repo')}, not {repo}"]
    if is_commit(revision):
        if manifest.get("commit") != revision:
            return [f"manifest is at commit {manifest.get('commit')}, not the pinned {revision}"]
    elif manifest.get("revision") != revision:
        return [f"manifest was made for revision {manifest.get('revision')!r}, not {revision!r}"]
    return size_problems(manifest.get("files", {}), sizes)


def git_blob_sha1(path: Path) -> str:
    """Git's object id of a file: sha1 over 'blob <size>\\0' + content (what the hub reports as blob_id)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    return _hash_into(digest, path)


def sha256_file(path: Path) -> str:
    return _hash_into(hashlib.sha256(), path)


def _hash_into(digest: Any, path: Path) -> str:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_problems(model_dir: Path, files: Mapping[str, FileMeta]) -> dict[str, str]:
    """Full check of every expected file: presence, size, then sha256 (LFS) or git blob sha1 -> {path: why}."""
    bad: dict[str, str] = {}
    for name, meta in sorted(files.items()):
        path = model_dir / name
        if not path.is_file():
            bad[name] = f"{name} is missing"
            continue
        size = path.stat().st_size
        if size != meta["size"]:
            bad[name] = f"{name} has {size} bytes, expected {meta['size']}"
        elif meta.get("sha256") and (got := sha256_file(path)) != meta["sha256"]:
            bad[name] = f"{name} has sha256 {got}, expected {meta['sha256']}"
        elif meta.get("blob_id") and (got := git_blob_sha1(path)) != meta["blob_id"]:
            bad[name] = f"{name} has git blob id {got}, expected {meta['blob_id']}"
    return bad


def incomplete_leftovers(model_dir: Path) -> list[Path]:
    """Partial downloads huggingface_hub left behind (it can exit 0 with some: huggingface_hub#4223)."""
    state = model_dir / HF_STATE_DIR
    return sorted(state.rglob("*.incomplete")) if state.is_dir() else []


def disk_sizes(model_dir: Path, names: Iterable[str]) -> dict[str, int]:
    """{name: size} for those of `names` that are regular files under model_dir."""
    sizes = {}
    for name in names:
        path = model_dir / name
        if path.is_file():
            sizes[name] = path.stat().st_size
    return sizes


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((model_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def make_manifest(repo: str, revision: str, commit: str, files: Mapping[str, FileMeta]) -> dict[str, Any]:
    return {
        "repo": repo,
        "revision": revision,
        "commit": commit,
        "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {name: {"size": m["size"], "sha256": m.get("sha256")} for name, m in sorted(files.items())},
    }


def write_manifest(model_dir: Path, manifest: Mapping[str, Any]) -> None:
    """Atomically (temp file + rename), so a crash never leaves a half-written manifest."""
    tmp = model_dir / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, model_dir / MANIFEST_NAME)


# ---- fetch (runs in the transient systemd unit) ---------------------------------------------------------------


def _discard(model_dir: Path, name: str) -> None:
    """Delete a repo file that failed verification and huggingface_hub's record of it, so it is re-fetched."""
    (model_dir / name).unlink(missing_ok=True)
    (model_dir / HF_STATE_DIR / "download" / f"{name}.metadata").unlink(missing_ok=True)


def _read_token(token_file: str | None) -> str | None:
    if not token_file:
        return None
    token = Path(token_file).read_text().strip()
    return token or None


def fetch(repo: str, revision: str, model_dir: Path, *, endpoint: str | None, token: str | None,
          max_workers: int, transfer: str = "resumable") -> dict[str, Any]:
    """Resolve `revision`, download the snapshot, verify it and write the manifest; returns the manifest."""
    from huggingface_hub import HfApi, snapshot_download

    info = HfApi(endpoint=endpoint, token=token).model_info(repo, revision=revision, files_metadata=True)
    commit = info.sha
    files = expected_files(info.siblings or [])
    log(f"{repo} revision {revision} is commit {commit} ({len(files)} files, "
        f"{sum(m['size'] for m in files.values()) / 2**30:.2f} GiB)")

    old = read_manifest(model_dir)
    if old and old.get("commit") == commit and not size_problems(old.get("files", {}), disk_sizes(model_dir, files)):
        log(f"already complete at {commit}")
        return old
    (model_dir / MANIFEST_NAME).unlink(missing_ok=True)  # no manifest while the snapshot changes
    for name in sorted(set((old or {}).get("files", {})) - set(files)):
        log(f"removing {name}: it was in our commit {old.get('commit')}, not in {commit}")
        _discard(model_dir, name)

    bad: dict[str, str] = {}
    for attempt in (1, 2):
        try:
            if transfer == "xet":
                snapshot_download(repo, revision=commit, local_dir=model_dir, max_workers=max_workers,
                                  token=token, endpoint=endpoint)
            else:
                small = sorted(name for name, meta in files.items() if not meta.get("sha256"))
                snapshot_download(repo, revision=commit, local_dir=model_dir, max_workers=max_workers,
                                  token=token, endpoint=endpoint, allow_patterns=[glob.escape(n) for n in small])
                large = {name: meta for name, meta in files.items() if meta.get("sha256")}
                fetch_resumable(repo, commit, model_dir, large, endpoint=endpoint, token=token,
                                max_workers=max_workers)
        except DownloadError:
            raise
        except Exception as exc:  # transfer/HTTP/disk errors: one line, not a chained traceback of hundreds
            # of lines that pushes huggingface_hub's warnings (they name the file and URL) out of the log tail
            raise DownloadError(f"fetching {repo}@{commit} failed: {type(exc).__name__}: {exc} "
                                "(the warnings above name the file; re-run the deploy to retry)") from None
        bad = content_problems(model_dir, files)
        if not bad:
            break
        for name, why in bad.items():
            log(f"attempt {attempt}: {why}; discarding it")
            _discard(model_dir, name)
    if bad:
        raise DownloadError("files still wrong after a re-fetch: " + "; ".join(bad.values()))

    for leftover in incomplete_leftovers(model_dir) + stale_parts(model_dir):  # every file verified: not in use
        log(f"removing stale partial download {leftover.relative_to(model_dir)}")
        leftover.unlink()
    others = _untracked(model_dir, files)
    if others:
        log(f"leaving {len(others)} other file(s) in {model_dir} untouched: {', '.join(others[:5])}")
    manifest = make_manifest(repo, revision, commit, files)
    write_manifest(model_dir, manifest)
    log(f"complete: {repo} at {commit} in {model_dir}")
    return manifest


def stale_parts(model_dir: Path) -> list[Path]:
    """Partial files of resumable transfers (after a verified snapshot none of them is needed)."""
    state = model_dir / PARTIAL_DIR
    return sorted(state.glob("*.part")) if state.is_dir() else []


def _session(token: str | None, max_workers: int) -> Any:
    """requests session with the Hub's headers; urllib3 Retry re-tries refused connects and 429/5xx answers."""
    import requests
    from huggingface_hub.utils import build_hf_headers
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(total=5, read=0, backoff_factor=1, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=frozenset({"GET"}), raise_on_status=False)
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=max(max_workers, 1))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers.update(build_hf_headers(token=token))  # requests drops Authorization on a CDN redirect
    return session


def _get_from(session: Any, url: str, part: Path, have: int) -> None:
    """One GET of `url` appended to `part` from byte `have` (from 0 if the server ignores the Range)."""
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, headers=headers, stream=True, timeout=(10, 60)) as response:
        response.raise_for_status()
        content_range = response.headers.get("Content-Range", "")
        if have and not (response.status_code == 206 and content_range.startswith(f"bytes {have}-")):
            log(f"{part.name}: the server ignored Range bytes={have}- ({response.status_code}); starting over")
            have = 0
        with part.open("ab" if have else "wb") as out:
            for chunk in response.iter_content(RESUME_CHUNK):
                out.write(chunk)


def resume_file(session: Any, url: str, name: str, size: int, dest: Path, part: Path) -> None:
    """Complete `dest` from `url`, continuing `part` from its size; gives up after MAX_STALLS GETs in a row
    that add nothing (the part stays for the next run)."""
    import requests

    stalls = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            log(f"{name}: partial file {part} is larger than {size} bytes; starting over")
            part.unlink()
            have = 0
        if have == size:
            break
        log(f"{name}: {'resuming at byte ' + str(have) if have else 'fetching'} of {size}")
        try:
            _get_from(session, url, part, have)
            error: Exception | None = None
        except requests.HTTPError as exc:
            raise DownloadError(f"{name}: {exc}") from None
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            error = exc
        now = part.stat().st_size if part.exists() else 0
        stalls = 0 if now > have else stalls + 1
        if now < size and stalls >= MAX_STALLS:
            raise DownloadError(f"{name}: {MAX_STALLS} attempts in a row got no data (last: "
                                f"{type(error).__name__ if error else 'short body'}); {now} of {size} bytes kept "
                                f"in {part}, a re-run resumes there")
        if now < size:
            log(f"{name}: connection lost at byte {now} of {size} "
                f"({type(error).__name__ if error else 'short body'}); resuming")
            time.sleep(stalls)
    os.replace(part, dest)
    log(f"{name}: complete ({size} bytes)")


def fetch_resumable(repo: str, commit: str, model_dir: Path, files: Mapping[str, FileMeta], *,
                    endpoint: str | None, token: str | None, max_workers: int) -> None:
    """Fetch every file of `files` whose size on disk is wrong, max_workers at a time, each resumable."""
    from concurrent.futures import ThreadPoolExecutor

    from huggingface_hub import hf_hub_url

    todo = {name: meta for name, meta in files.items()
            if not (model_dir / name).is_file() or (model_dir / name).stat().st_size != meta["size"]}
    if not todo:
        return
    (model_dir / PARTIAL_DIR).mkdir(parents=True, exist_ok=True)
    session = _session(token, max_workers)
    errors: list[str] = []

    def one(name: str) -> None:
        meta = todo[name]
        dest = model_dir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        url = hf_hub_url(repo, name, revision=commit, endpoint=endpoint)
        try:
            resume_file(session, url, name, meta["size"], dest, model_dir / PARTIAL_DIR / f"{meta['sha256']}.part")
        except DownloadError as exc:
            errors.append(str(exc))
        except OSError as exc:  # disk full, permissions: name the file, keep the other transfers going
            errors.append(f"{name}: {exc}")

    with ThreadPoolExecutor(max_workers=min(max_workers, len(todo))) as pool:
        list(pool.map(one, sorted(todo)))
    if errors:
        raise DownloadError(f"fetching {repo}@{commit} failed: " + "; ".join(sorted(errors)))


def _untracked(model_dir: Path, files: Mapping[str, FileMeta]) -> list[str]:
    ours = set(files) | {MANIFEST_NAME}
    return sorted(
        str(p.relative_to(model_dir)) for p in model_dir.rglob("*")
        if p.is_file() and str(p.relative_to(model_dir)) not in ours and HF_STATE_DIR not in p.relative_to(model_dir).parents
    )


def _lock(model_dir: Path) -> Any:
    """An exclusive lock so a manual run and the unit never write the same snapshot at once."""
    path = model_dir / HF_STATE_DIR / "gpu-llm.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise DownloadError(f"another download into {model_dir} is running (lock {path})") from exc
    return handle


# ---- wait (the deploy's join: runs over ssh while the unit works) ---------------------------------------------


def unit_active(unit: str) -> bool:
    state = subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True).stdout.strip()
    return state in ("active", "activating", "reloading", "deactivating")


def log_tail(path: str | None, unit: str, lines: int = LOG_TAIL_LINES) -> str:
    """Last lines of the download log file, else of the unit's journal."""
    if path and Path(path).is_file():
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    return subprocess.run(["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat"],
                          capture_output=True, text=True).stdout


def wait(unit: str, model_dir: Path, repo: str, revision: str, *, log_file: str | None, timeout_s: float,
         poll_s: float = 5.0) -> dict[str, Any]:
    """Block until the download unit stops, then require a complete manifest; returns it."""
    deadline = time.monotonic() + timeout_s
    while unit_active(unit):
        if time.monotonic() > deadline:
            raise DownloadError(f"{unit} still running after {timeout_s:.0f}s\n{log_tail(log_file, unit)}")
        time.sleep(poll_s)
    manifest = read_manifest(model_dir)
    names = (manifest or {}).get("files", {})
    problems = manifest_problems(manifest, disk_sizes(model_dir, names), repo, revision)
    if problems:
        raise DownloadError(f"download of {repo}@{revision} into {model_dir} did not complete: "
                            f"{'; '.join(problems[:5])}\n--- last lines of the download log ---\n"
                            f"{log_tail(log_file, unit)}")
    return manifest  # type: ignore[return-value]


# ---- CLI -----------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("fetch", "wait"):
        p = sub.add_parser(name)
        p.add_argument("--repo", required=True)
        p.add_argument("--revision", required=True)
        p.add_argument("--dir", required=True, type=Path)
    fetch_p = sub.choices["fetch"]
    fetch_p.add_argument("--endpoint", help="Hugging Face endpoint (else $HF_ENDPOINT or huggingface.co)")
    fetch_p.add_argument("--token-file", help="file holding the token (never pass a token on the command line)")
    fetch_p.add_argument("--max-workers", type=int, default=8)
    fetch_p.add_argument("--transfer", choices=TRANSFERS, default="resumable",
                         help="resumable: Range requests that continue across runs; xet: huggingface-hub's own")
    wait_p = sub.choices["wait"]
    wait_p.add_argument("--unit", required=True)
    wait_p.add_argument("--log-file")
    wait_p.add_argument("--timeout", type=float, default=7200)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "fetch":
            args.dir.mkdir(parents=True, exist_ok=True)
            with _lock(args.dir):
                fetch(args.repo, args.revision, args.dir, endpoint=args.endpoint,
                      token=_read_token(args.token_file), max_workers=args.max_workers, transfer=args.transfer)
        else:
            manifest = wait(args.unit, args.dir, args.repo, args.revision, log_file=args.log_file,
                            timeout_s=args.timeout)
            log(f"{manifest['repo']} at {manifest['commit']} complete in {args.dir}")
    except DownloadError as exc:
        print(f"[gpu-llm download] error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
