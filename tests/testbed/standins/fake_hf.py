"""A local Hugging Face Hub endpoint serving one model repo, enough for huggingface_hub's downloads (stdlib only).

Own code because no maintained library serves the Hub's download API offline; it must run with a bare python3
on the testbed bridge (Debian 12). It implements what huggingface_hub 1.x/2.x calls for snapshot_download,
hf_hub_download and model_info(files_metadata=True) (read from huggingface_hub 2.4.0: _snapshot_download.py,
file_download.py, hf_api.py, utils/_http.py, utils/_pagination.py):

  GET  /api/models/{repo}[/revision/{rev}][?blobs=true]  -> {id, sha, siblings[{rfilename, size, blobId, lfs}]}
  GET  /api/models/{repo}/tree/{rev}[/{path}]            -> [{type, path, size, oid, lfs{oid,size,pointerSize}}]
  HEAD|GET /{repo}/resolve/{rev}/{filename}              -> X-Repo-Commit, ETag (git blob sha1, or sha256 for
       LFS files) with X-Linked-Etag/X-Linked-Size for LFS files, Content-Length, Accept-Ranges; Range -> 206.
       No X-Xet-* headers and no xetHash: clients never take the Xet path. Files are served directly (no CDN
       redirect). Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound) as the Hub does.
Revisions: the branch "main" and the commit sha (derived from the files' contents) both resolve.

Test controls:
  --require-token T        every Hub route answers 401 unless "Authorization: Bearer T" is sent.
  --cut-file F --cut-after N [--cut-times K]
                           the link "dies" at byte offset N of file F: a GET of F whose body spans offset N sends
                           the bytes before N, then the connection is closed. K such cuts per arming (default 1),
                           then F is served normally. huggingface_hub 2.4 retries a broken GET inside the same call,
                           keeping only the whole 10 MiB reads it got (resumed with "Range: bytes=<kept>-", or from
                           byte 0 without Range when nothing was kept), and raises after 6 GETs in a row that kept
                           nothing; its partial file is deleted, so the next call starts F over. Hence: N >= 10 MiB
                           (with --shard-mib above it) and K=1 shows a Range resume; N < 10 MiB and K=6 makes one
                           call fail and the next one succeed.
  --rate-kib R             send every file body at R KiB/s per GET (a slow link: a transfer still runs when a
                           test reboots the host or stops the run)
  POST /_fake/arm          JSON {"file", "after", "times"} (any subset) re-arms the cut; SIGHUP re-arms with the
                           command-line values. GET /_fake/state shows what is armed.
  --log PATH               one JSON line per request: time (its start) and end (epoch seconds), method, path,
                           range, auth (bool, never the token), status, bytes sent, cut.
The model repo: --repo-dir (default: hf_repo/ next to this file). Shards named in model.safetensors.index.json
that are missing there are generated as valid safetensors files of deterministic bytes (size: --shard-mib,
default from the index's total_size, 3 MiB each); .gitattributes is synthesised from --lfs patterns when absent.
Fixture content: config.json (Qwen3-32B's published shape + its AWQ quantization_config) and tokenizer_config.json's
chat_template (verbatim, /work/shared/reference/qwen3_chat_template.jinja) are the real repo's; the rest is small
stand-in content under the real file names.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_REPO_ID = "Qwen/Qwen3-32B-AWQ"
DEFAULT_REPO_DIR = Path(__file__).resolve().parent / "hf_repo"
DEFAULT_LFS = ["*.safetensors", "tokenizer.json"]
LFS_SPEC = "https://git-lfs.github.com/spec/v1"
CHUNK = 64 * 1024


@dataclass(frozen=True)
class RepoFile:
    """One file of the served repo, with the ids the Hub reports for it."""

    path: str
    data: bytes
    lfs: bool

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @cached_property
    def pointer(self) -> bytes:
        return f"version {LFS_SPEC}\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    @cached_property
    def blob_id(self) -> str:
        """Git blob sha1 of what git stores: the LFS pointer for LFS files, else the content."""
        stored = self.pointer if self.lfs else self.data
        return hashlib.sha1(b"blob %d\0" % len(stored) + stored).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id


def safetensors_bytes(tensors: list[str], tensor_bytes: int, seed: str) -> bytes:
    """A valid safetensors file holding `tensors` as I32 vectors of deterministic pseudo-random bytes."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    for i, name in enumerate(tensors):
        offsets = [i * tensor_bytes, (i + 1) * tensor_bytes]
        header[name] = {"dtype": "I32", "shape": [tensor_bytes // 4], "data_offsets": offsets}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    body = random.Random(seed).randbytes(tensor_bytes * len(tensors))
    return len(raw).to_bytes(8, "little") + raw + body


def load_repo(repo_dir: Path, lfs_patterns: list[str], shard_mib: float | None = None) -> dict[str, RepoFile]:
    """All files of repo_dir, plus generated shards and .gitattributes where missing, keyed by repo path.

    shard_mib sets the generated shards' size (the index's metadata.total_size is rewritten to match);
    by default it comes from the index's total_size.
    """
    contents = {p.relative_to(repo_dir).as_posix(): p.read_bytes() for p in sorted(repo_dir.rglob("*")) if p.is_file()}
    index_raw = contents.get("model.safetensors.index.json")
    if index_raw is not None:
        index = json.loads(index_raw)
        weight_map: dict[str, str] = index["weight_map"]
        shards = sorted(set(weight_map.values()))
        if shard_mib is None:
            tensor_bytes = index["metadata"]["total_size"] // len(weight_map)
        else:
            tensor_bytes = int(shard_mib * 2**20 * len(shards) / len(weight_map)) // 4 * 4
            index["metadata"]["total_size"] = tensor_bytes * len(weight_map)
            contents["model.safetensors.index.json"] = (json.dumps(index, indent=2) + "\n").encode()
        for shard in shards:
            if shard not in contents:
                names = [name for name, file in weight_map.items() if file == shard]
                contents[shard] = safetensors_bytes(names, tensor_bytes, seed=shard)
    if ".gitattributes" not in contents:
        lines = [f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in lfs_patterns]
        contents[".gitattributes"] = "".join(lines).encode()
    return {
        path: RepoFile(path, data, any(fnmatch.fnmatch(path, pattern) for pattern in lfs_patterns))
        for path, data in sorted(contents.items())
    }


def commit_sha(files: dict[str, RepoFile]) -> str:
    """A stable 40-hex commit id derived from the tree (changes whenever a file does)."""
    tree = "".join(f"{f.path}\0{f.blob_id}\n" for f in files.values())
    return hashlib.sha1(tree.encode()).hexdigest()


class CutSwitch:
    """How many more GETs of one file get their connection closed at one byte offset (thread-safe)."""

    def __init__(self, file: str | None, after: int, times: int) -> None:
        self._lock = threading.Lock()
        self.defaults = (file, after, times)
        self.file, self.after, self.remaining = file, after, times

    def arm(self, file: str | None = None, after: int | None = None, times: int | None = None) -> None:
        with self._lock:
            default_file, default_after, default_times = self.defaults
            self.file = file if file is not None else default_file
            self.after = after if after is not None else default_after
            self.remaining = times if times is not None else default_times

    def take(self, path: str, start: int, end: int) -> int | None:
        """Offset at which to cut a GET of path[start:end], consuming one cut; None to send it whole."""
        with self._lock:
            if self.file != path or self.remaining <= 0 or not start <= self.after < end:
                return None
            self.remaining -= 1
            return self.after

    def state(self) -> dict[str, object]:
        with self._lock:
            return {"file": self.file, "after": self.after, "remaining": self.remaining}


class HubError(Exception):
    """An error answer in the Hub's shape (status, X-Error-Code, message)."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Hub:
    """The served repository and the request-independent state of the server."""

    def __init__(
        self, repo_id: str, files: dict[str, RepoFile], token: str | None, cut: CutSwitch, log_path: Path | None
    ) -> None:
        self.repo_id, self.files, self.token, self.cut = repo_id, files, token, cut
        self.sha = commit_sha(files)
        self._log_path = log_path
        self._log_lock = threading.Lock()
        self.rate: float | None = None  # bytes/s per GET of a file body (--rate-kib), None: as fast as possible

    def resolve(self, revision: str) -> str:
        if revision in ("main", self.sha):
            return self.sha
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def log(self, entry: dict[str, object]) -> None:
        if self._log_path is None:
            return
        with self._log_lock, self._log_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    def siblings(self, blobs: bool) -> list[dict[str, object]]:
        result: list[dict[str, object]] = []
        for f in self.files.values():
            entry: dict[str, object] = {"rfilename": f.path}
            if blobs:
                entry.update(size=len(f.data), blobId=f.blob_id)
                if f.lfs:
                    entry["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": len(f.pointer)}
            result.append(entry)
        return result

    def tree(self, prefix: str) -> list[dict[str, object]]:
        result: list[dict[str, object]] = []
        for f in self.files.values():
            if prefix and not f.path.startswith(prefix.rstrip("/") + "/"):
                continue
            entry: dict[str, object] = {"type": "file", "oid": f.blob_id, "size": len(f.data), "path": f.path}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": len(f.pointer)}
            result.append(entry)
        return result


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end_exclusive) of a single "bytes=a-b" / "bytes=a-" / "bytes=-n" range; None: whole file."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise HubError(416, None, f"unsupported Range {header!r}")
    first, _, last = spec.strip().partition("-")
    if first == "":
        start, end = max(size - int(last), 0), size
    else:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    if start >= size or start >= end:
        raise HubError(416, None, f"Range {header!r} not satisfiable for {size} bytes")
    return start, end


class Handler(BaseHTTPRequestHandler):
    """Routes Hub API and resolve requests to the Hub object of the server."""

    protocol_version = "HTTP/1.1"
    server_version = "fake-hf"
    # buffered: an answer leaves after _dispatch has logged it (handle_one_request flushes), so a client that
    # has its answer finds the request in the log; a cut body is flushed, logged, then the link drops
    wbufsize = 64 * 1024
    hub: Hub  # set on the subclass made by serve()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- BaseHTTPRequestHandler's name
        sys.stderr.write("fake_hf: " + format % args + "\n")

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if url.path != "/_fake/arm":
            self._send_json(404, {"error": f"no route {url.path}"})
            return
        try:
            wanted = json.loads(body or b"{}")
            self.hub.cut.arm(wanted.get("file"), wanted.get("after"), wanted.get("times"))
        except (ValueError, AttributeError) as exc:
            self._send_json(400, {"error": f"bad arm request: {exc}"})
            return
        self._send_json(200, self.hub.cut.state())

    def _dispatch(self, head: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        entry: dict[str, object] = {
            "time": round(time.time(), 3), "method": self.command, "path": url.path, "query": url.query,
            "range": self.headers.get("Range"), "auth": "Authorization" in self.headers,
        }
        try:
            if path == "/_fake/state":
                self._send_json(200, self.hub.cut.state(), head=head)
                entry.update(status=200)
                return
            self._check_token()
            prefix = f"/api/models/{self.hub.repo_id}"
            if path == prefix or path.startswith(prefix + "/"):
                status = self._api(path[len(prefix):], parse_qs(url.query), head)
                entry.update(status=status)
            elif path.startswith(f"/{self.hub.repo_id}/resolve/"):
                entry.update(self._resolve(path[len(f"/{self.hub.repo_id}/resolve/"):], head))
            elif path.startswith("/api/models/") or "/resolve/" in path:
                raise HubError(404, "RepoNotFound", "Repository not found")
            else:
                raise HubError(404, None, f"no route {path}")
        except HubError as exc:
            self._send_error(exc, head)
            entry.update(status=exc.status, error=exc.code or exc.message)
        except (BrokenPipeError, ConnectionResetError):
            entry.update(status=0, error="client went away")
        finally:
            entry["end"] = round(time.time(), 3)
            self.hub.log(entry)
            if getattr(self, "cut_link", False):
                self.cut_link = False
                self.connection.shutdown(socket.SHUT_RDWR)  # the body stays short of Content-Length: a dropped link

    def _check_token(self) -> None:
        if self.hub.token is None:
            return
        auth = self.headers.get("Authorization")
        if auth is None:
            raise HubError(401, "RepoNotFound", "Invalid username or password.")
        if auth != f"Bearer {self.hub.token}":
            raise HubError(401, None, "Invalid credentials in Authorization header")

    def _api(self, rest: str, query: dict[str, list[str]], head: bool) -> int:
        if rest.startswith("/tree/"):
            revision, _, sub = rest[len("/tree/"):].partition("/")
            self.hub.resolve(revision)
            self._send_json(200, self.hub.tree(sub), head=head)
            return 200
        if rest == "" or rest.startswith("/revision/"):
            sha = self.hub.resolve(rest[len("/revision/"):] if rest else "main")
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            author = self.hub.repo_id.split("/")[0]
            body = {
                "_id": self.hub.sha[:24], "id": self.hub.repo_id, "modelId": self.hub.repo_id, "author": author,
                "sha": sha, "private": self.hub.token is not None, "gated": False, "disabled": False,
                "library_name": "transformers", "pipeline_tag": "text-generation",
                "tags": ["transformers", "safetensors"],
                "lastModified": "2025-05-21T06:07:00.000Z", "createdAt": "2025-05-01T00:00:00.000Z",
                "siblings": self.hub.siblings(blobs),
            }
            if blobs:
                body["usedStorage"] = sum(len(f.data) for f in self.hub.files.values())
            self._send_json(200, body, head=head)
            return 200
        raise HubError(404, None, f"no API route {rest}")

    def _resolve(self, rest: str, head: bool) -> dict[str, object]:
        revision, _, filename = rest.partition("/")
        sha = self.hub.resolve(revision)
        f = self.hub.files.get(filename)
        if f is None:
            raise HubError(404, "EntryNotFound", f"{filename} does not exist on \"{revision}\"")
        size = len(f.data)
        span = parse_range(self.headers.get("Range"), size)
        start, end = span if span else (0, size)
        self.send_response(206 if span else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{f.etag}"')
        self.send_header("X-Repo-Commit", sha)
        if span:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        if f.lfs:
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(size))
        self.end_headers()
        if head:
            return {"status": self.response_status, "bytes": 0}
        cut_at = self.hub.cut.take(f.path, start, end)
        stop = cut_at if cut_at is not None else end
        sent = 0
        for offset in range(start, stop, CHUNK):
            chunk = f.data[offset:min(offset + CHUNK, stop)]
            self.wfile.write(chunk)
            sent += len(chunk)
            if self.hub.rate:
                self.wfile.flush()
                time.sleep(len(chunk) / self.hub.rate)
        if cut_at is not None:
            self.wfile.flush()
            self.close_connection = True
            self.cut_link = True  # _dispatch drops the link after logging the request
        return {"status": self.response_status, "bytes": sent, "cut": cut_at is not None}

    def send_response(self, code: int, message: str | None = None) -> None:
        self.response_status = code
        super().send_response(code, message)

    def _send_json(self, status: int, body: object, head: bool = False) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if not head:
            self.wfile.write(raw)

    def _send_error(self, exc: HubError, head: bool) -> None:
        raw = json.dumps({"error": exc.message}).encode()
        self.send_response(exc.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("X-Error-Message", exc.message)
        if exc.code:
            self.send_header("X-Error-Code", exc.code)
        if exc.status == 404 and exc.code == "EntryNotFound":
            self.send_header("X-Repo-Commit", self.hub.sha)
        self.end_headers()
        if not head:
            self.wfile.write(raw)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    parser.add_argument("--repo-id", default=DEFAULT_REPO_ID, help=f"repository id served (default {DEFAULT_REPO_ID})")
    parser.add_argument("--repo-dir", type=Path, default=DEFAULT_REPO_DIR, help="directory with the repo's files")
    parser.add_argument(
        "--lfs", action="append", metavar="GLOB", help=f"LFS-tracked file pattern, repeatable (default {DEFAULT_LFS})"
    )
    parser.add_argument("--shard-mib", type=float, metavar="MIB", help="size of each generated weight shard")
    parser.add_argument("--require-token", metavar="TOKEN", help="answer 401 unless 'Authorization: Bearer TOKEN'")
    parser.add_argument("--cut-file", metavar="NAME", help="file whose GETs get their connection cut")
    parser.add_argument("--cut-after", type=int, default=0, metavar="BYTES", help="byte offset of the cut")
    parser.add_argument("--cut-times", type=int, default=1, metavar="K", help="cuts per arming (default 1)")
    parser.add_argument("--rate-kib", type=float, metavar="R", help="send file bodies at R KiB/s per GET")
    parser.add_argument("--log", type=Path, metavar="PATH", help="append one JSON line per request to PATH")
    args = parser.parse_args(argv)
    if not args.repo_dir.is_dir():
        parser.error(f"--repo-dir {str(args.repo_dir)!r} is not a directory")
    return args


def serve(args: argparse.Namespace) -> ThreadingHTTPServer:
    """Build the Hub from args and return its (not yet serving) HTTP server."""
    files = load_repo(args.repo_dir, args.lfs or DEFAULT_LFS, args.shard_mib)
    if args.cut_file is not None and args.cut_file not in files:
        raise SystemExit(f"fake_hf: --cut-file {args.cut_file!r} is not in the repo; files: {', '.join(files)}")
    cut = CutSwitch(args.cut_file, args.cut_after, args.cut_times if args.cut_file else 0)
    hub = Hub(args.repo_id, files, args.require_token, cut, args.log)
    hub.rate = args.rate_kib * 1024 if args.rate_kib else None
    handler = type("BoundHandler", (Handler,), {"hub": hub})
    server = ThreadingHTTPServer((args.bind, args.port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = serve(args)
    hub: Hub = server.RequestHandlerClass.hub  # type: ignore[attr-defined]
    signal.signal(signal.SIGHUP, lambda *_: hub.cut.arm())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, port = server.server_address[:2]
    print(f"fake_hf: serving {hub.repo_id}@{hub.sha} ({len(hub.files)} files) on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
