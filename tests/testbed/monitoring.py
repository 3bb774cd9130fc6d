"""Testbed pieces of the monitoring (issue 14): NVIDIA's DCGM exporter image stood in inside a host.

The real image comes from nvcr.io, which the testbed does not serve (its registry stands in for Docker Hub only), so
the stand-in is `docker import`-ed into the GPU host under the real reference before the deploy: the deploy's
`docker image inspect || docker pull` then finds it, as on a host that already has the image.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from .harness import Host
from .proc import TestbedError, timed
from .rootfs import image_tarball

EXPORTER = Path(__file__).resolve().parent / "standins" / "dcgm" / "fake_dcgm_exporter.py"
ENTRYPOINT = '["python3","/standin/fake_dcgm_exporter.py"]'


def dcgm_image_tar(host: Host) -> Path:
    base = image_tarball(host.cfg)
    data = EXPORTER.read_bytes()
    digest = hashlib.sha256(base.name.encode() + data).hexdigest()[:16]
    dest = host.cfg.cache / "images" / f"dcgm-exporter-{digest}.tar"
    if dest.exists():
        return dest
    dest.parent.mkdir(exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    shutil.copy(base, tmp)
    with tarfile.open(tmp, "a") as tar:
        d = tarfile.TarInfo("./standin")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(d)
        info = tarfile.TarInfo("./standin/fake_dcgm_exporter.py")
        info.size, info.mode, info.mtime = len(data), 0o755, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    tmp.rename(dest)
    return dest


def import_dcgm_image(host: Host, image_ref: str) -> None:
    """`docker import` the DCGM exporter stand-in as `image_ref` in `host`."""
    tar = dcgm_image_tar(host)
    with timed(f"import stand-in DCGM exporter {image_ref} into {host.name}"), open(tar, "rb") as fh:
        res = subprocess.run([*host.ssh_args(), "docker", "import", "--change", f"'ENTRYPOINT {ENTRYPOINT}'",
                              "-", image_ref], stdin=fh, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise TestbedError(f"docker import of {image_ref} on {host.name} failed: {res.stderr[-2000:]}")
