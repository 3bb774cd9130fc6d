"""Test CA + TLS cert for the vendor host names, apt repo signing key and SSH key, made once per cache."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .config import REGISTRY_HOSTS, VENDOR_HOSTS, Config, registry_ips
from .proc import run

REPO_UID = "gpu-llm testbed repo <repo@test.invalid>"


def _server_cert(d: Path, name: str, cn: str, sans: str) -> None:
    """<name>.crt/.key for `sans`, signed by the test CA (made once per cache; testbeds starting together wait)."""
    if (d / f"{name}.crt").exists():
        return
    with open(d / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (d / f"{name}.crt").exists():
            _make_cert(d, name, cn, sans)


def _make_cert(d: Path, name: str, cn: str, sans: str) -> None:
    run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
         "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr")])
    (d / f"{name}-ext.cnf").write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")
    run(["openssl", "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"), "-CAkey",
         str(d / "ca.key"), "-CAcreateserial", "-days", "3650", "-extfile", str(d / f"{name}-ext.cnf"),
         "-out", str(d / f"{name}.crt.tmp")])
    os.replace(d / f"{name}.crt.tmp", d / f"{name}.crt")


def ensure_keys(cfg: Config) -> Path:
    """Create (once) and return the cache's key directory."""
    d = cfg.cache / "keys"
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "ca.crt").exists():
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
             "-subj", "/CN=gpu-llm testbed CA", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt.tmp"),
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        os.replace(d / "ca.crt.tmp", d / "ca.crt")
    sans = ",".join(f"DNS:{h}" for h in VENDOR_HOSTS)
    ext = f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n"
    # made again when VENDOR_HOSTS gained a name (the CA stays: hosts trust the CA, not this certificate)
    if not (d / "srv.crt").exists() or not (d / "ext.cnf").exists() or (d / "ext.cnf").read_text() != ext:
        with open(d / ".srv.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (d / "srv.crt").exists() or (d / "ext.cnf").read_text() != ext:
                run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=fake-vendors",
                     "-keyout", str(d / "srv.key.tmp"), "-out", str(d / "srv.csr")])
                (d / "ext.cnf.tmp").write_text(ext)
                run(["openssl", "x509", "-req", "-in", str(d / "srv.csr"), "-CA", str(d / "ca.crt"), "-CAkey",
                     str(d / "ca.key"), "-CAcreateserial", "-days", "3650", "-extfile", str(d / "ext.cnf.tmp"),
                     "-out", str(d / "srv.crt.tmp")])
                os.replace(d / "srv.key.tmp", d / "srv.key")
                os.replace(d / "srv.crt.tmp", d / "srv.crt")
                os.replace(d / "ext.cnf.tmp", d / "ext.cnf")
    # the registry standing in for Docker Hub: its names, and the address it listens on in every testbed
    # (the harness pushes to that address directly, the guests reach it by name through the rate-limiting proxy)
    _server_cert(d, "registry", "fake-docker-hub", ",".join([*(f"DNS:{h}" for h in REGISTRY_HOSTS),
                                                             *(f"IP:{ip}" for ip in registry_ips())]))
    gnupg = d / "gnupg"
    if not (d / "repo-key.asc").exists():
        gnupg.mkdir(mode=0o700, exist_ok=True)
        env = {**os.environ, "GNUPGHOME": str(gnupg)}
        run(["gpg", "-q", "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
             "--quick-gen-key", REPO_UID, "ed25519", "sign", "never"], env=env)
        run(["gpg", "--batch", "--yes", "-o", str(d / "repo-key.gpg"), "--export", REPO_UID], env=env)
        asc = run(["gpg", "--armor", "--export", REPO_UID], env=env).stdout
        (d / "repo-key.asc").write_text(asc)
        run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False)
    if not (d / "id_ed25519").exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpu-llm-testbed", "-f", str(d / "id_ed25519")])
    return d


def gpg_env(keys: Path) -> dict[str, str]:
    """Environment for gpg calls that sign with the repo key."""
    return {**os.environ, "GNUPGHOME": str(keys / "gnupg")}
