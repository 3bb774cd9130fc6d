"""Stand-in vLLM image (python3 + jinja2 + tests/testbed/standins/*.py) imported into a host, and the fake HF hub."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from .config import PROJECT, Config
from .harness import Host, Testbed
from .proc import TestbedError, timed
from .rootfs import image_tarball

STANDINS = Path(__file__).resolve().parent / "standins"
ENTRYPOINT = '["python3","/standin/fake_vllm.py"]'


def flags_for(vllm_version: str) -> list[str]:
    """The CLI flags the pinned vLLM release accepts (the image's /standin/flags.json)."""
    from gpu_llm.plan.versions import known_flags  # the project's release table

    return sorted(known_flags(vllm_version))


def image_tar(cfg: Config, vllm_version: str) -> Path:
    """Cached tarball: trimmed Ubuntu base + /standin/*.py + /standin/flags.json for `vllm_version`."""
    files = {f"standin/{p.name}": p.read_bytes() for p in sorted(STANDINS.glob("*.py"))}
    files["standin/flags.json"] = (json.dumps(flags_for(vllm_version), indent=1) + "\n").encode()
    base = image_tarball(cfg)
    digest = hashlib.sha256(base.name.encode() + b"".join(k.encode() + v for k, v in sorted(files.items())))
    digest = digest.hexdigest()[:16]
    dest = cfg.cache / "images" / f"vllm-{vllm_version}-{digest}.tar"
    if dest.exists():
        return dest
    dest.parent.mkdir(exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    shutil.copy(base, tmp)
    with tarfile.open(tmp, "a") as tar:
        d = tarfile.TarInfo("./standin")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(d)
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size, info.mode, info.mtime = len(data), 0o755, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    tmp.rename(dest)
    return dest


def build_vllm_image(host: Host, image_ref: str, vllm_version: str) -> None:
    """`docker import` the stand-in as `image_ref` inside `host` (ENTRYPOINT python3 /standin/fake_vllm.py)."""
    tar = image_tar(host.cfg, vllm_version)
    with timed(f"import stand-in image {image_ref} into {host.name}"), open(tar, "rb") as fh:
        res = subprocess.run([*host.ssh_args(), "docker", "import", "--change", f"'ENTRYPOINT {ENTRYPOINT}'",
                              "-", image_ref], stdin=fh, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise TestbedError(f"docker import of {image_ref} on {host.name} failed: {res.stderr[-2000:]}")


def start_fake_hf(tb: Testbed, port: int = 8090, *args: str) -> str:
    """Run standins/fake_hf.py on the bridge IP (extra CLI `args` as its --help lists); returns its endpoint URL.

    It lives until tb.down() (pid file in the state dir)."""
    log = open(tb.cfg.state / f"fake-hf-{port}.log", "ab")
    proc = subprocess.Popen([sys.executable, str(STANDINS / "fake_hf.py"), "--bind", tb.cfg.bridge_ip,
                             "--port", str(port), *args], cwd=PROJECT, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    (tb.cfg.state / f"fake-hf-{port}.pid").write_text(str(proc.pid))
    for _ in range(100):
        if proc.poll() is not None:
            raise TestbedError(f"fake_hf.py exited {proc.returncode}; see {log.name}")
        try:
            socket.create_connection((tb.cfg.bridge_ip, port), timeout=0.5).close()
        except OSError:
            time.sleep(0.1)
            continue
        time.sleep(0.2)  # something answered: make sure it is ours (a stale server holds the port, ours exits)
        if proc.poll() is not None:
            raise TestbedError(f"fake_hf.py exited {proc.returncode} (port {port} taken?); see {log.name}")
        return f"http://{tb.cfg.bridge_ip}:{port}"
    raise TestbedError(f"fake_hf.py did not listen on {tb.cfg.bridge_ip}:{port}; see {log.name}")
