"""Testbed pieces of the monitoring (issue 14): NVIDIA's DCGM exporter image stood in inside a host.

The real image comes from nvcr.io, which the testbed does not serve (its registry stands in for Docker Hub only), so
the stand-in is `docker import`-ed into the GPU host under the real reference before the deploy: the deploy's
`docker image inspect || docker pull` then finds it, as on a host that already has the image.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .harness import Host
from .images import standin_tar
from .proc import TestbedError, timed

EXPORTER = Path(__file__).resolve().parent / "standins" / "dcgm" / "fake_dcgm_exporter.py"
ENTRYPOINT = '["python3","/standin/fake_dcgm_exporter.py"]'


def dcgm_image_tar(host: Host) -> Path:
    return standin_tar(host.cfg, "dcgm-exporter", {"standin/fake_dcgm_exporter.py": EXPORTER.read_bytes()})


def import_dcgm_image(host: Host, image_ref: str) -> None:
    """`docker import` the DCGM exporter stand-in as `image_ref` in `host`."""
    tar = dcgm_image_tar(host)
    with timed(f"import stand-in DCGM exporter {image_ref} into {host.name}"), open(tar, "rb") as fh:
        res = subprocess.run([*host.ssh_args(), "docker", "import", "--change", f"'ENTRYPOINT {ENTRYPOINT}'",
                              "-", image_ref], stdin=fh, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise TestbedError(f"docker import of {image_ref} on {host.name} failed: {res.stderr[-2000:]}")
