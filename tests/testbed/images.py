"""Stand-in vLLM image (python3 + jinja2 + tests/testbed/standins/*.py) imported into a host or pushed to the
testbed's registry (Docker Hub's stand-in), and the fake HF hub."""

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
from dataclasses import dataclass
from pathlib import Path

from . import registry
from .config import PROJECT, Config
from .harness import Host, Testbed
from .proc import TestbedError, run, timed
from .rootfs import _lock, image_tarball

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
    return standin_tar(cfg, f"vllm-{vllm_version}", files)


def standin_tar(cfg: Config, stem: str, files: dict[str, bytes]) -> Path:
    """Cached tarball `<stem>-<digest>.tar`: the trimmed Ubuntu base plus `files` (paths under standin/, mode 0755),
    for `docker import` as a stand-in image."""
    base = image_tarball(cfg)
    digest = hashlib.sha256(base.name.encode() + b"".join(k.encode() + v for k, v in sorted(files.items())))
    dest = cfg.cache / "images" / f"{stem}-{digest.hexdigest()[:16]}.tar"
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


def image_env(image_ref: str, vllm_version: str) -> dict[str, str]:
    """The CUDA environment the real image of `image_ref` carries from its nvidia/cuda base: CUDA_VERSION and
    NVIDIA_REQUIRE_CUDA (the stand-in runtime enforces it; gpu_llm.plan.versions.image_requirement,
    tests/fixtures/nvidia_require_cuda_12.9.txt)."""
    from gpu_llm.plan.versions import cuda_of_image, image_requirement, release

    cuda = cuda_of_image(image_ref, release(vllm_version))
    return {"CUDA_VERSION": f"{cuda[0]}.{cuda[1]}", "NVIDIA_REQUIRE_CUDA": image_requirement(cuda)}


def build_vllm_image(host: Host, image_ref: str, vllm_version: str) -> None:
    """`docker import` the stand-in as `image_ref` inside `host` (ENTRYPOINT python3 /standin/fake_vllm.py, the
    image's CUDA environment)."""
    tar = image_tar(host.cfg, vllm_version)
    env = [arg for k, v in image_env(image_ref, vllm_version).items() for arg in ("--change", f"'ENV {k}=\"{v}\"'")]
    with timed(f"import stand-in image {image_ref} into {host.name}"), open(tar, "rb") as fh:
        res = subprocess.run([*host.ssh_args(), "docker", "import", "--change", f"'ENTRYPOINT {ENTRYPOINT}'", *env,
                              "-", image_ref], stdin=fh, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise TestbedError(f"docker import of {image_ref} on {host.name} failed: {res.stderr[-2000:]}")


MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
CREATED = "2025-01-01T00:00:00Z"  # fixed: the same content gives the same image id (config digest) every time


@dataclass(frozen=True)
class PushedImage:
    """A stand-in image in the testbed's registry: `image_id` is what `docker inspect` shows once pulled."""

    ref: str  # vllm/vllm-openai:v0.11.0
    manifest_digest: str
    image_id: str  # sha256 of the image config = the pulled image's Id
    layer_bytes: int  # the compressed layer: what a pull downloads (plus the small config)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def registry_layer(cfg: Config, vllm_version: str) -> tuple[Path, dict]:
    """The image tarball gzip-ed as one registry layer (cached next to it), with its digests and size."""
    tar = image_tar(cfg, vllm_version)
    gz, meta_file = tar.with_suffix(".tar.gz"), tar.with_suffix(".layer.json")
    with _lock(cfg, "vllm-image-layer"):
        if not meta_file.exists():
            with timed(f"gzip stand-in image layer {gz.name}"):
                tmp = gz.with_suffix(".tmp")
                run(["sh", "-c", f"gzip -n -c '{tar}' > '{tmp}'"])
                tmp.rename(gz)
                meta = {"diff_id": _sha256_file(tar), "digest": _sha256_file(gz), "size": gz.stat().st_size}
                meta_file.write_text(json.dumps(meta))
    return gz, json.loads(meta_file.read_text())


def push_vllm_image(tb: Testbed, image_ref: str, vllm_version: str) -> PushedImage:
    """Push the stand-in (ENTRYPOINT python3 /standin/fake_vllm.py) to the testbed's registry as `image_ref`
    (a Docker Hub name: vllm/vllm-openai:v0.11.0), starting the registry if it is not running."""
    gz, layer = registry_layer(tb.cfg, vllm_version)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": CREATED,
        "config": {"Entrypoint": json.loads(ENTRYPOINT),
                   "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                           *(f"{k}={v}" for k, v in image_env(image_ref, vllm_version).items())]},
        "rootfs": {"type": "layers", "diff_ids": [layer["diff_id"]]},
        "history": [{"created": CREATED, "created_by": "gpu-llm testbed: stand-in vLLM image"}],
    }, sort_keys=True, separators=(",", ":")).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_V2,
        "config": {"mediaType": CONFIG_V1, "size": len(config), "digest": config_digest},
        "layers": [{"mediaType": LAYER_GZIP, "size": layer["size"], "digest": layer["digest"]}],
    }, indent=3).encode()
    repository, _, tag = image_ref.rpartition(":")
    registry.start(tb.cfg, keep_rate=True)  # the rate a test set stays
    with timed(f"push stand-in image {image_ref} ({layer['size'] / 2**20:.0f} MiB layer) to the registry"):
        digest = registry.push(tb.cfg, repository, tag, manifest, MANIFEST_V2, [
            registry.Blob(config_digest, len(config), data=config),
            registry.Blob(layer["digest"], layer["size"], path=gz)])
    return PushedImage(image_ref, digest, config_digest, layer["size"])


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
