"""Cached Ubuntu 24.04 root filesystems: the host base (with Ubuntu's docker.io) and the stand-in image's base."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .config import PROJECT, Config
from .proc import TestbedError, run, timed

KEYRING = PROJECT / "tests" / "data" / "ubuntu-archive-keyring.gpg"
PACKAGES = ["systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-venv", "python3-jinja2",
            "pciutils", "kmod", "initramfs-tools", "curl", "gnupg", "ca-certificates", "sudo", "iproute2", "iptables", "less"]
_PKG_HASH = hashlib.sha256(" ".join(PACKAGES).encode()).hexdigest()[:8]
# What the stand-in vLLM image does not need (keeps the imported tarball small).
IMAGE_EXCLUDES = ["./usr/share/doc", "./usr/share/man", "./usr/share/locale", "./usr/share/info",
                  "./var/lib/apt/lists/*", "./var/cache/apt/*", "./var/cache/debconf/*-old", "./var/log/*"]


class ArchiveUnreachable(TestbedError):
    """debootstrap or apt could not download from the Ubuntu archive (callers skip, never pass)."""


@contextmanager
def _lock(cfg: Config, name: str) -> Iterator[None]:
    """Serialise cache builds between concurrent testbeds."""
    cfg.cache.mkdir(parents=True, exist_ok=True)
    with open(cfg.cache / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def cached_dir(cfg: Config, dest: Path, what: str, build: Callable[[Path], None]) -> Path:
    """`dest` in the cache, built once by `build(tmp)` into a temporary directory renamed into place (a failed
    build leaves nothing behind that looks done); concurrent testbeds wait for each other."""
    with _lock(cfg, dest.name.rsplit("-", 1)[0]):
        if not dest.exists():
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            with timed(what):
                build(tmp)
            tmp.rename(dest)
    return dest


def _download_failed(out: str) -> bool:
    return any(s in out for s in ("Failed getting release file", "Couldn't download", "Failed to fetch",
                                  "Temporary failure resolving", "Could not resolve", "Connection failed",
                                  "Unable to fetch", "Failure trying to run", "couldn't download"))


def _debootstrap(cfg: Config, dest: Path) -> None:
    noble = Path("/usr/share/debootstrap/scripts/noble")
    if not noble.exists():  # Debian 12's debootstrap predates noble; newer ones link it to gutsy
        noble.symlink_to("gutsy")
    log = cfg.cache / "debootstrap.log"
    # No mirror argument: debootstrap's own default Ubuntu archive is used.
    res = run(["debootstrap", "--variant=minbase", "--components=main,universe", f"--include={','.join(PACKAGES)}",
               f"--keyring={KEYRING}", "noble", str(dest)], check=False, timeout=1800)
    log.write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        msg = f"debootstrap of Ubuntu noble failed (log: {log}): {(res.stdout + res.stderr)[-600:]}"
        raise (ArchiveUnreachable if _download_failed(res.stdout + res.stderr) else TestbedError)(msg)


def _chroot_apt_install(root: Path, packages: list[str]) -> None:
    """apt-get install inside `root` from the archive debootstrap used, daemons kept from starting."""
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    run(["mount", "-t", "proc", "proc", str(root / "proc")])
    try:
        res = run(["chroot", str(root), "sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                   f"apt-get install -y -qq --no-install-recommends {' '.join(packages)}"], check=False, timeout=1800)
        if res.returncode != 0:
            cls = ArchiveUnreachable if _download_failed(res.stdout + res.stderr) else TestbedError
            raise cls(f"apt-get install {packages} in {root} failed: {(res.stdout + res.stderr)[-600:]}")
        run(["chroot", str(root), "apt-get", "clean"])
    finally:
        run(["umount", str(root / "proc")], check=False)
        policy.unlink()


def plain_base(cfg: Config) -> Path:
    """Ubuntu noble minbase + PACKAGES, sshd enabled, offline apt (cached)."""
    def build(tmp: Path) -> None:
        _debootstrap(cfg, tmp)
        run(["chroot", str(tmp), "systemctl", "enable", "ssh"])
        (tmp / "etc/apt/sources.list").rename(tmp / "etc/apt/sources.list.archive")  # hosts are offline
        for key in (tmp / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        (tmp / "etc/machine-id").write_text("")

    # a changed package list builds a new base
    return cached_dir(cfg, cfg.cache / f"noble-base-{_PKG_HASH}", "build base rootfs (debootstrap noble)", build)


def docker_base(cfg: Config) -> Path:
    """plain_base + Ubuntu's docker.io (a real dockerd runs inside the hosts) (cached)."""
    base = plain_base(cfg)

    def build(tmp: Path) -> None:
        run(["cp", "-a", str(base), str(tmp)])
        src = tmp / "etc/apt/sources.list"
        shutil.copy(tmp / "etc/apt/sources.list.archive", src)
        try:
            _chroot_apt_install(tmp, ["docker.io"])
        finally:
            src.unlink()

    return cached_dir(cfg, cfg.cache / f"noble-docker-{_PKG_HASH}", "build docker rootfs (docker.io)", build)


def image_tarball(cfg: Config) -> Path:
    """Tar of the trimmed plain base (python3 + jinja2), the stand-in vLLM image's filesystem (cached)."""
    base = plain_base(cfg)
    dest = cfg.cache / f"vllm-image-base-{_PKG_HASH}.tar"
    with _lock(cfg, "vllm-image-base"):
        if not dest.exists():
            tmp = dest.with_suffix(".tmp")
            with timed("build stand-in image tarball"):
                run(["tar", "-C", str(base), *(f"--exclude={e}" for e in IMAGE_EXCLUDES), "-cf", str(tmp), "."])
            tmp.rename(dest)
    return dest
