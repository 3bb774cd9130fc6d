"""Stand-in of Ubuntu's archive, http://archive.ubuntu.com/ubuntu, for the offline hosts.

A real Ubuntu host installs Ubuntu's own packages (haproxy, prometheus, ...) from the archive in its apt sources. The
testbed hosts have no route out, so the vendor server also answers plain HTTP on port 80 as archive.ubuntu.com with a
subset of the `noble` suite:

* REAL_PACKAGES: real Ubuntu noble packages and the dependencies the hosts' rootfs lacks, resolved by apt against the
  rootfs's dpkg status and downloaded from the archive on this machine into the cache (once per package list), kept at
  their real pool paths (pool/<component>/...);
* standin_debs(): stand-in packages (tests/testbed/repos.Deb) per component, for what must behave like a host's
  hardware would make it behave (e.g. signed kernel modules).

The suite is indexed with apt-ftparchive and signed by the testbed's repo key; hosts get
/etc/apt/sources.list.d/ubuntu.sources naming that key (a real host's names Ubuntu's archive key instead).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from .config import Config
from .proc import TestbedError, run
from .repos import Deb, index_suite
from .rootfs import KEYRING, ArchiveUnreachable, _download_failed, cached_dir, docker_base

ARCHIVE_HOSTS = ("archive.ubuntu.com", "security.ubuntu.com")
ARCHIVE_DIR = "ubuntu"  # http://archive.ubuntu.com/ubuntu -> <www>/ubuntu
SUITE = "noble"
COMPONENTS = ("main", "restricted", "universe", "multiverse")
# Real packages from Ubuntu noble (the gateway's TLS front end; the monitoring's Prometheus and node exporter, and
# python3-yaml for the Grafana stand-in, tests/testbed/debs/grafana_server.py).
REAL_PACKAGES: tuple[str, ...] = ("haproxy", "prometheus", "prometheus-node-exporter", "python3-yaml")
HOST_KEYRING = "/usr/share/keyrings/gpu-llm-testbed-archive.gpg"
# deb822 source as Ubuntu 24.04 ships it in /etc/apt/sources.list.d/ubuntu.sources, but for the testbed's key
HOST_SOURCES = f"""Types: deb
URIs: http://archive.ubuntu.com/ubuntu/
Suites: {SUITE}
Components: {' '.join(COMPONENTS)}
Signed-By: {HOST_KEYRING}
"""


def standin_debs(repo_key: bytes) -> list[tuple[str, Deb]]:
    """Stand-in packages served in the archive: (component, Deb): Ubuntu's 570-server driver and Canonical's
    signed modules for the guests' kernel (restricted; tests/testbed/ubuntu_restricted.py)."""
    from .ubuntu_restricted import restricted_debs

    return restricted_debs(repo_key)


def _real_hash(cfg: Config) -> str:
    return hashlib.sha256(f"{docker_base(cfg).name} {' '.join(sorted(REAL_PACKAGES))}".encode()).hexdigest()[:10]


def real_pool(cfg: Config) -> Path:
    """Cached directory holding pool/<component>/.../*.deb: REAL_PACKAGES and what the rootfs lacks of their
    dependencies, downloaded from Ubuntu's archive with apt (the machine's own apt, pointed at noble)."""
    return cached_dir(cfg, cfg.cache / f"ubuntu-archive-{_real_hash(cfg)}",
                      f"download Ubuntu packages {', '.join(REAL_PACKAGES)}", lambda tmp: _download(cfg, tmp))


def _download(cfg: Config, tmp: Path) -> None:
    apt = tmp / "apt"
    for d in ("lists/partial", "archives/partial", "etc/preferences.d", "etc/apt.conf.d"):
        (apt / d).mkdir(parents=True)
    (apt / "sources.list").write_text(
        f"deb [arch=amd64 signed-by={KEYRING}] http://archive.ubuntu.com/ubuntu {SUITE} {' '.join(COMPONENTS)}\n")
    opts = ["-o", "APT::Architecture=amd64", "-o", "APT::Architectures=amd64",
            "-o", f"Dir::State::status={docker_base(cfg) / 'var/lib/dpkg/status'}",
            "-o", f"Dir::State::Lists={apt / 'lists'}", "-o", f"Dir::Cache={apt}",
            "-o", f"Dir::Cache::archives={apt / 'archives'}", "-o", f"Dir::Etc::sourcelist={apt / 'sources.list'}",
            "-o", "Dir::Etc::sourceparts=-", "-o", f"Dir::Etc::preferencesparts={apt / 'etc/preferences.d'}",
            "-o", f"Dir::Etc::parts={apt / 'etc/apt.conf.d'}", "-o", "APT::Install-Recommends=false",
            "-o", "Debug::NoLocking=true"]
    res = run(["apt-get", *opts, "update"], check=False, timeout=900)
    if res.returncode != 0 or _download_failed(res.stdout + res.stderr):
        raise ArchiveUnreachable(f"apt-get update against Ubuntu's archive failed: {(res.stdout + res.stderr)[-600:]}")
    res = run(["apt-get", *opts, "-qq", "--print-uris", "install", *REAL_PACKAGES], check=False)
    if res.returncode != 0:
        raise TestbedError(f"resolving {REAL_PACKAGES} in Ubuntu noble failed: {(res.stdout + res.stderr)[-600:]}")
    uris = [line.split()[0].strip("'") for line in res.stdout.splitlines() if line.startswith("'http")]
    if not uris:
        raise TestbedError(f"apt resolved nothing to download for {REAL_PACKAGES}: {res.stdout[-600:]}")
    for uri in uris:
        rel = uri.split("/ubuntu/", 1)[1]  # pool/<component>/<x>/<source>/<file>.deb, as in the real archive
        out = tmp / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        got = run(["curl", "-sSfL", "--retry", "3", "-o", str(out), uri], check=False, timeout=600)
        if got.returncode != 0:
            raise ArchiveUnreachable(f"download of {uri} failed: {got.stderr[-300:]}")
    shutil.rmtree(apt)


def build_archive(cfg: Config, www: Path, keys: Path, repo_key: bytes) -> Path:
    """Write <www>/ubuntu: the real pool (hard links to the cache), the stand-ins and a signed `noble` suite."""
    root = www / ARCHIVE_DIR
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(real_pool(cfg), root, copy_function=lambda s, d: Path(d).hardlink_to(s))
    work = www.parent / "ubuntu-debbuild"
    shutil.rmtree(work, ignore_errors=True)
    for component, deb in standin_debs(repo_key):
        deb.build(work, root / "pool" / component / deb.name[0] / deb.name)
    shutil.rmtree(work, ignore_errors=True)
    index_suite(keys, root, SUITE, {c: f"pool/{c}" for c in COMPONENTS}, "Ubuntu")
    return root


def install_source(root: Path, repo_key: bytes) -> None:
    """Give a host's rootfs the archive's apt source and the key it is signed with."""
    (root / HOST_KEYRING.lstrip("/")).write_bytes(repo_key)
    (root / "etc/apt/sources.list.d/ubuntu.sources").write_text(HOST_SOURCES)


__all__ = ["ARCHIVE_HOSTS", "REAL_PACKAGES", "build_archive", "install_source", "real_pool", "standin_debs"]
