"""Docker Hub's stand-in: Debian's docker-registry (distribution v2) behind a rate-limiting TCP proxy.

Per testbed id: the registry serves HTTPS (certificate of the test CA for registry-1.docker.io, keys.py) on
<registry_ip>:5010, the proxy (rate_proxy.py) listens on <registry_ip>:443, and the guests' /etc/hosts maps
registry-1.docker.io to <registry_ip> (the bridge's second address). So a guest's `docker pull
vllm/vllm-openai:TAG` goes, as on the Internet, to https://registry-1.docker.io/v2/: the registry has no auth, so
/v2/ answers 200 and Docker asks no token. The harness pushes to :5010 directly (not rate limited).
Processes: registry.pid and registry-proxy.pid in the state dir (Testbed.down() stops them, leftovers() finds
them by the state dir in their command lines); data in <state>/registry (removed by down()).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import PROJECT, Config
from .proc import TestbedError

BINARY = "/usr/bin/docker-registry"  # Debian's package docker-registry (distribution 2.8)
PORT = 5010  # the registry itself (not 5000: a stock docker-registry service may hold *:5000); the proxy: 443
PROCESSES = ("registry", "registry-proxy")  # pid file stems in the state dir


def data_dir(cfg: Config) -> Path:
    return cfg.state / "registry"


def rate_file(cfg: Config) -> Path:
    return cfg.state / "registry-rate"


def proxy_log(cfg: Config) -> Path:
    """The proxy's JSON lines: connections and the bytes sent to the guests each second (rate_proxy.py)."""
    return cfg.state / "registry-proxy.jsonl"


def request_log(cfg: Config) -> Path:
    """The registry's own log (JSON lines; "response completed" ones carry the URI, status, bytes, duration)."""
    return cfg.state / "registry.log"


def url(cfg: Config) -> str:
    """Where the harness talks to the registry directly (not through the proxy)."""
    return f"https://{cfg.registry_ip}:{PORT}"


def config_yaml(cfg: Config) -> str:
    keys = cfg.cache / "keys"
    return f"""version: 0.1
log:
  level: info
  formatter: json
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {data_dir(cfg) / "data"}
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {cfg.registry_ip}:{PORT}
  secret: gpu-llm-testbed
  tls:
    certificate: {keys / "registry.crt"}
    key: {keys / "registry.key"}
"""


def _pid(cfg: Config, stem: str) -> int | None:
    f = cfg.state / f"{stem}.pid"
    try:
        pid = int(f.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def running(cfg: Config) -> bool:
    return all(_pid(cfg, stem) is not None for stem in PROCESSES)


def set_rate(cfg: Config, kib: float | None) -> None:
    """Limit what the registry sends to all guests together to `kib` KiB/s (None: unlimited); the proxy
    applies it within half a second, to transfers already running too."""
    rate_file(cfg).write_text(f"{kib}\n" if kib else "")


def _ready(cfg: Config) -> bool:
    res = subprocess.run(["curl", "-sf", "-o", "/dev/null", "--cacert", str(cfg.cache / "keys" / "ca.crt"),
                          f"{url(cfg)}/v2/"], capture_output=True)
    if res.returncode != 0:
        return False
    res = subprocess.run(["curl", "-sf", "-o", "/dev/null", "--cacert", str(cfg.cache / "keys" / "ca.crt"),
                          "--resolve", f"registry-1.docker.io:443:{cfg.registry_ip}", "https://registry-1.docker.io/v2/"],
                         capture_output=True)
    return res.returncode == 0


def start(cfg: Config, rate_kib: float | None = None, *, keep_rate: bool = False) -> None:
    """Start the registry and its proxy unless they run (the pushed images stay in the data dir); set the rate
    (`keep_rate`: leave the rate file as it is)."""
    if not keep_rate:
        set_rate(cfg, rate_kib)
    if running(cfg):
        return
    stop(cfg)  # one of the two died: start both afresh
    if not Path(BINARY).exists():
        raise TestbedError(f"{BINARY} missing: run .ci/e2e-setup as root (Debian package docker-registry)")
    d = data_dir(cfg)
    (d / "data").mkdir(parents=True, exist_ok=True)
    (d / "config.yml").write_text(config_yaml(cfg))
    procs = {
        "registry": [BINARY, "serve", str(d / "config.yml")],
        "registry-proxy": [sys.executable, "-m", "tests.testbed.rate_proxy", f"{cfg.registry_ip}:443",
                           f"{cfg.registry_ip}:{PORT}", str(rate_file(cfg)), str(proxy_log(cfg))],
    }
    for stem, cmd in procs.items():
        log = open(cfg.state / f"{stem}.log", "ab")
        proc = subprocess.Popen(cmd, cwd=PROJECT, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        (cfg.state / f"{stem}.pid").write_text(str(proc.pid))
    for _ in range(100):
        if _ready(cfg):
            return
        if not running(cfg):
            break
        time.sleep(0.1)
    stop(cfg)
    raise TestbedError(f"registry did not come up on {cfg.registry_ip}; see {cfg.state / 'registry.log'} and "
                       f"{cfg.state / 'registry-proxy.log'}")


def stop(cfg: Config) -> None:
    """Stop the registry and its proxy (guests' pulls then fail: connection refused); the data stays."""
    pids = [(stem, _pid(cfg, stem)) for stem in PROCESSES]
    for _, pid in pids:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for stem, pid in pids:
        while pid is not None and time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)
        (cfg.state / f"{stem}.pid").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:  # started by another process (an earlier `up`)
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


# ---- pushing: the registry API, as `docker push` uses it (monolithic blob uploads, then the manifest) ----------


@dataclass(frozen=True)
class Blob:
    digest: str  # sha256:<hex>
    size: int
    path: Path | None = None  # content from a file, or
    data: bytes | None = None  # inline


def push(cfg: Config, repository: str, tag: str, manifest: bytes, media_type: str, blobs: list[Blob]) -> str:
    """Upload `blobs` (skipping those present) and the manifest as repository:tag; returns the manifest digest."""
    import requests

    session = requests.Session()
    session.trust_env = False  # no proxy, and REQUESTS_CA_BUNDLE must not replace the test CA
    session.verify = str(cfg.cache / "keys" / "ca.crt")
    base = f"{url(cfg)}/v2/{repository}"
    for blob in blobs:
        if session.head(f"{base}/blobs/{blob.digest}", timeout=30).status_code == 200:
            continue
        res = session.post(f"{base}/blobs/uploads/", timeout=30)
        if res.status_code != 202:
            raise TestbedError(f"registry: starting the upload of {blob.digest} -> {res.status_code} {res.text[:300]}")
        location = res.headers["Location"]
        if location.startswith("/"):
            location = url(cfg) + location
        body = blob.data if blob.data is not None else open(blob.path, "rb")  # type: ignore[arg-type]
        try:
            res = session.put(location, params={"digest": blob.digest}, data=body, timeout=600,
                              headers={"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)})
        finally:
            if blob.data is None:
                body.close()  # type: ignore[union-attr]
        if res.status_code != 201:
            raise TestbedError(f"registry: upload of {blob.digest} -> {res.status_code} {res.text[:300]}")
    res = session.put(f"{base}/manifests/{tag}", data=manifest, headers={"Content-Type": media_type}, timeout=30)
    if res.status_code != 201:
        raise TestbedError(f"registry: manifest {repository}:{tag} -> {res.status_code} {res.text[:300]}")
    return res.headers["Docker-Content-Digest"]


def requests_in_log(cfg: Config) -> list[dict]:
    """The registry's "response completed" entries (method, uri, status, bytes written, duration, time)."""
    out = []
    if not request_log(cfg).exists():
        return out
    for line in request_log(cfg).read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "response completed":
            out.append(entry)
    return out
