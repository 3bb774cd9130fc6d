"""Signed apt repositories of stand-in packages, laid out like NVIDIA's and Docker's (served by vendor_server.py).

Package names, versions and dependency shapes follow the real repositories (sources in tests/testbed/README.md);
the payloads are small stand-ins whose behaviour the e2e tests observe (nvidia-smi, module "load" on boot,
reboot-required, nvidia-ctk's daemon.json merge, a runtime that enforces NVIDIA_REQUIRE_CUDA then runs runc).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .keys import REPO_UID, ensure_keys, gpg_env
from .proc import run

DEBS_SRC = Path(__file__).resolve().parent / "debs"
CUDA_DIR = "compute/cuda/repos/ubuntu2404/x86_64"
CUDA_URL = f"https://developer.download.nvidia.com/{CUDA_DIR}"
NVCT_DIR = "libnvidia-container/stable/deb/amd64"
DOCKER_DIR = "linux/ubuntu"
# Grafana's repository (https://apt.grafana.com, `deb ... stable main`, key /gpg.key) sits at the root of its host
GRAFANA_VERSION = "12.3.0"
# Which path prefix (under the served root) each repo name covers; break_repo() stops serving one.
REPO_PREFIXES = {"cuda": "/compute/cuda/", "container-toolkit": "/libnvidia-container/", "docker": "/linux/ubuntu/"}
DRIVERS = {"570": ["570.153.02", "570.172.08", "570.195.03"], "575": ["575.57.08"]}
CUDA_TOOLKIT = ("12-8", "12.8.1-1", "12.8.93")
NVCT_VERSION = "1.17.8-1"
DOCKER_VERSION = "5:28.3.2-1~ubuntu.24.04~noble"

MODULE_UNIT = """[Unit]
Description=gpu-llm testbed stand-in: load the NVIDIA kernel module of the installed driver
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target
ConditionPathExists=/var/lib/gpu-llm-testbed/installed-driver

[Service]
Type=oneshot
RemainAfterExit=yes
# Secure Boot (tests/testbed/secure_boot.py): the kernel loads only signed modules; DKMS builds are not signed
ExecStart=/bin/sh -c 'if [ -e /etc/gpu-llm-testbed/secure-boot ] && [ ! -e /var/lib/gpu-llm-testbed/module-signed ]; then echo "modprobe: ERROR: could not insert nvidia: Key was rejected by service" >&2; exit 1; fi; mkdir -p /run/gpu-llm-testbed && cp /var/lib/gpu-llm-testbed/installed-driver /run/gpu-llm-testbed/loaded-driver'

[Install]
WantedBy=sysinit.target
"""
DKMS_POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ]; then
  mkdir -p /var/lib/gpu-llm-testbed
  echo {ver} > /var/lib/gpu-llm-testbed/installed-driver
  rm -f /var/lib/gpu-llm-testbed/module-signed  # built here by DKMS: not signed
  touch /var/run/reboot-required
  echo "{pkg}" >> /var/run/reboot-required.pkgs
  systemctl enable gpu-llm-testbed-nvidia-module.service >/dev/null 2>&1 || true
fi
"""
DKMS_POSTRM = """#!/bin/sh
set -e
if [ "$1" = remove ] || [ "$1" = purge ]; then
  if [ "$(cat /var/lib/gpu-llm-testbed/installed-driver 2>/dev/null)" = {ver} ]; then
    rm -f /var/lib/gpu-llm-testbed/installed-driver
  fi
fi
"""
# Fabric manager (nvidia-fabricmanager-<branch>, debs/fabric_manager.py) and persistence daemon stand-ins' units.
FABRIC_UNIT = """[Unit]
Description=NVIDIA fabric manager service (gpu-llm testbed stand-in)
After=gpu-llm-testbed-nvidia-module.service

[Service]
Type=simple
ExecStart=/usr/bin/nv-fabricmanager -c /usr/share/nvidia/nvswitch/fabricmanager.cfg

[Install]
WantedBy=multi-user.target
"""
# As Ubuntu packages it (NVIDIA's repository reuses that packaging): a STATIC unit (no [Install]) that runs the daemon
# WITHOUT persistence mode and stops when nothing needs it, https://github.com/canonical/nvidia-graphics-drivers/blob/
# 570-server-noble/debian/templates/nvidia-compute-utils-flavour.nvidia-persistenced.service.in
PERSISTENCED_UNIT = """[Unit]
Description=NVIDIA Persistence Daemon (gpu-llm testbed stand-in)
Wants=syslog.target
StopWhenUnneeded=true

[Service]
Type=forking
ExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced --no-persistence-mode --verbose
ExecStopPost=/bin/rm -rf /var/run/nvidia-persistenced
"""
# Forks like the real daemon (unless --no-fork) and leaves its arguments where the stand-in nvidia-smi reads them: it
# reports persistence mode Enabled while a daemon runs without --no-persistence-mode (the real daemon's default).
PERSISTENCED = """#!/bin/sh
# gpu-llm testbed stand-in: runs while the NVIDIA module is "loaded" (real: fails without the driver)
[ -s /run/gpu-llm-testbed/loaded-driver ] || { echo "nvidia-persistenced failed to initialize" >&2; exit 1; }
mkdir -p /var/run/nvidia-persistenced
case " $* " in *" --no-fork "*) echo "$$ $*" > /var/run/nvidia-persistenced/gpu-llm-testbed-args; exec sleep infinity;; esac
sleep infinity </dev/null >/dev/null 2>&1 &
echo "$! $*" > /var/run/nvidia-persistenced/gpu-llm-testbed-args
echo "$!" > /var/run/nvidia-persistenced/nvidia-persistenced.pid
"""
LOGGED = """#!/bin/sh
mkdir -p /var/log/gpu-llm-testbed
echo "$(date +%FT%T) $(basename "$0") $*" >> /var/log/gpu-llm-testbed/calls.log
{tail}
"""


@dataclass
class Deb:
    """One stand-in package: control fields, files (path -> (content, mode)) and maintainer scripts."""

    name: str
    version: str
    arch: str = "amd64"
    control: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[bytes | str, int]] = field(default_factory=dict)
    scripts: dict[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version.split(':')[-1]}_{self.arch}.deb"

    def build(self, work: Path, out: Path) -> Path:
        root = work / f"{self.name}_{self.version}"
        shutil.rmtree(root, ignore_errors=True)
        (root / "DEBIAN").mkdir(parents=True)
        lines = [f"Package: {self.name}", f"Version: {self.version}", f"Architecture: {self.arch}",
                 "Maintainer: gpu-llm testbed <testbed@test.invalid>",
                 *(f"{k}: {v}" for k, v in self.control.items()),
                 f"Description: testbed stand-in for {self.name}",
                 f" {self.description or 'Empty stand-in; only its name, version and dependencies matter.'}"]
        (root / "DEBIAN/control").write_text("\n".join(lines) + "\n")
        for rel, (content, mode) in self.files.items():
            p = root / rel.lstrip("/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content if isinstance(content, bytes) else content.encode())
            p.chmod(mode)
        conffiles = [rel for rel in self.files if rel.startswith("/etc/")]
        if conffiles:
            (root / "DEBIAN/conffiles").write_text("\n".join(conffiles) + "\n")
        for script, body in self.scripts.items():
            (root / "DEBIAN" / script).write_text(body)
            (root / "DEBIAN" / script).chmod(0o755)
        out.mkdir(parents=True, exist_ok=True)
        run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(root), str(out / self.filename)])
        return out / self.filename


def _virtual(name: str) -> dict[str, str]:
    """Real NVIDIA packages of different branches exclude each other through a shared virtual package."""
    return {"Provides": name, "Conflicts": name, "Replaces": name}


def cuda_debs(repo_key: bytes) -> list[Deb]:
    source = f"deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] {CUDA_URL}/ /\n"
    debs = [Deb("cuda-keyring", "1.1-1", arch="all", files={
        "/usr/share/keyrings/cuda-archive-keyring.gpg": (repo_key, 0o644),
        "/etc/apt/sources.list.d/cuda-ubuntu2404-x86_64.list": (source, 0o644)})]
    smi = (DEBS_SRC / "nvidia_smi.py").read_text()
    fm = (DEBS_SRC / "fabric_manager.py").read_text()
    for branch, versions in DRIVERS.items():
        for upstream in versions:
            ver = f"{upstream}-0ubuntu1"
            debs.append(Deb(f"nvidia-utils-{branch}", ver, control=_virtual("nvidia-utils"),
                            files={"/usr/bin/nvidia-smi": (smi, 0o755)}, description="Ships the nvidia-smi stand-in."))
            # nvidia-persistenced and its unit live in nvidia-compute-utils-<branch> (Ubuntu's packaging layout)
            debs.append(Deb(f"nvidia-compute-utils-{branch}", ver, control=_virtual("nvidia-compute-utils"),
                            files={"/usr/bin/nvidia-persistenced": (PERSISTENCED, 0o755),
                                   "/usr/lib/systemd/system/nvidia-persistenced.service": (PERSISTENCED_UNIT, 0o644)}))
            # NVIDIA's repository versions the fabric manager "<driver>-1" (nvidia-fabricmanager-570_570.172.08-1)
            debs.append(Deb(f"nvidia-fabricmanager-{branch}", f"{upstream}-1", control=_virtual("nvidia-fabricmanager"),
                            files={"/usr/bin/nv-fabricmanager": (fm.replace("@VERSION@", upstream), 0o755),
                                   "/usr/share/nvidia/nvswitch/fabricmanager.cfg": ("LOG_FILE_NAME=/var/log/"
                                                                                    "fabricmanager.log\n", 0o644),
                                   "/usr/lib/systemd/system/nvidia-fabricmanager.service": (FABRIC_UNIT, 0o644)},
                            description="Configures the stand-in NVSwitch fabric; refuses another driver version."))
            for flavour in ("", "-open"):
                dkms = f"nvidia-dkms-{branch}{flavour}"
                debs.append(Deb(dkms, ver, control=_virtual("nvidia-dkms-kernel"),
                                files={"/usr/lib/systemd/system/gpu-llm-testbed-nvidia-module.service":
                                       (MODULE_UNIT, 0o644)},
                                scripts={"postinst": DKMS_POSTINST.format(ver=upstream, pkg=dkms),
                                         "postrm": DKMS_POSTRM.format(ver=upstream)},
                                description="Records the installed driver; its boot unit 'loads' the module."))
                debs.append(Deb(f"nvidia-driver-{branch}{flavour}", ver, control={
                    **_virtual("nvidia-driver-binary"),
                    "Depends": f"nvidia-utils-{branch} (= {ver}), {dkms} (= {ver}), "
                               f"nvidia-compute-utils-{branch} (= {ver})"}))
    major_minor, tk_ver, nvcc_ver = CUDA_TOOLKIT
    nvcc = (f"#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
            f"echo 'Cuda compilation tools, release {major_minor.replace('-', '.')}, V{nvcc_ver}'\n")
    debs.append(Deb(f"cuda-toolkit-{major_minor}", tk_ver,
                    files={f"/usr/local/cuda-{major_minor.replace('-', '.')}/bin/nvcc": (nvcc, 0o755)}))
    return debs


def nvct_debs() -> list[Deb]:
    v = NVCT_VERSION
    return [
        Deb("libnvidia-container1", v),
        Deb("libnvidia-container-tools", v, control={"Depends": f"libnvidia-container1 (>= {v})"},
            files={"/usr/bin/nvidia-container-cli": (LOGGED.format(tail="exit 0"), 0o755)}),
        Deb("nvidia-container-toolkit-base", v, files={
            "/usr/bin/nvidia-ctk": ((DEBS_SRC / "nvidia_ctk.py").read_text(), 0o755),
            # checks NVIDIA_REQUIRE_CUDA as nvidia-container-cli does, then runs runc (debs/nvidia_container_runtime.py)
            "/usr/bin/nvidia-container-runtime": ((DEBS_SRC / "nvidia_container_runtime.py").read_text(), 0o755),
            "/etc/nvidia-container-runtime/config.toml": ("#testbed stand-in\n", 0o644)}),
        Deb("nvidia-container-toolkit", v, control={"Depends": f"nvidia-container-toolkit-base (= {v}), "
                                                    f"libnvidia-container-tools (>= {v}), "
                                                    "libnvidia-container-tools (<< 2.0.0)"},
            files={"/usr/bin/nvidia-container-runtime-hook": (LOGGED.format(tail="exit 0"), 0o755)}),
        Deb("nvidia-container-runtime", "3.14.0-1", arch="all",
            control={"Depends": "nvidia-container-toolkit (>= 1.14.0-1)"}),
    ]


def docker_debs() -> list[Deb]:
    v = DOCKER_VERSION
    return [Deb("containerd.io", "1.7.27-1"), Deb("docker-ce-cli", v),
            Deb("docker-ce", v, control={"Depends": "docker.io, docker-ce-cli, containerd.io (>= 1.7.27)"},
                description="Depends on Ubuntu's docker.io, which brings the real dockerd."),
            Deb("docker-buildx-plugin", "0.25.0-1~ubuntu.24.04~noble"),
            Deb("docker-compose-plugin", "2.38.2-1~ubuntu.24.04~noble")]


GRAFANA_UNIT = """[Unit]
Description=Grafana instance
Documentation=http://docs.grafana.org
Wants=network-online.target
After=network-online.target

[Service]
EnvironmentFile=/etc/default/grafana-server
User=grafana
Group=grafana
Type=simple
Restart=on-failure
WorkingDirectory=/usr/share/grafana
RuntimeDirectory=grafana
RuntimeDirectoryMode=0750
ExecStart=/usr/share/grafana/bin/grafana server --config=${CONF_FILE} --pidfile=${PID_FILE_DIR}/grafana-server.pid \\
  --packaging=deb cfg:default.paths.logs=${LOG_DIR} cfg:default.paths.data=${DATA_DIR} \\
  cfg:default.paths.plugins=${PLUGINS_DIR} cfg:default.paths.provisioning=${PROVISIONING_CFG_DIR}

[Install]
WantedBy=multi-user.target
"""
GRAFANA_DEFAULTS = """GRAFANA_USER=grafana
GRAFANA_GROUP=grafana
GRAFANA_HOME=/usr/share/grafana
LOG_DIR=/var/log/grafana
DATA_DIR=/var/lib/grafana
MAX_OPEN_FILES=10000
CONF_DIR=/etc/grafana
CONF_FILE=/etc/grafana/grafana.ini
RESTART_ON_UPGRADE=false
PLUGINS_DIR=/var/lib/grafana/plugins
PROVISIONING_CFG_DIR=/etc/grafana/provisioning
PID_FILE_DIR=/var/run/grafana
"""
# Like Grafana's postinst: a system user, its directories, and the service NOT started or enabled on install
GRAFANA_POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ]; then
  getent group grafana >/dev/null || addgroup --system --quiet grafana
  getent passwd grafana >/dev/null || adduser --system --quiet --ingroup grafana --no-create-home \\
    --home /usr/share/grafana grafana
  mkdir -p /var/lib/grafana /var/log/grafana /var/lib/grafana/plugins
  chown -R grafana:grafana /var/lib/grafana /var/log/grafana
  chown root:grafana /etc/grafana/grafana.ini && chmod 640 /etc/grafana/grafana.ini
  echo "### NOT starting on installation, please execute the following statements to configure grafana to start"
  echo " automatically using systemd"
fi
"""


def grafana_debs() -> list[Deb]:
    """Grafana's package: its unit, defaults file, config and provisioning directories as the real .deb lays them
    out; the server is debs/grafana_server.py (see its docstring for what it does and does not do)."""
    server = (DEBS_SRC / "grafana_server.py").read_text()
    return [Deb("grafana", GRAFANA_VERSION, control={"Depends": "adduser, python3, python3-yaml"},
                files={"/usr/share/grafana/bin/grafana": (server, 0o755),
                       "/usr/lib/systemd/system/grafana-server.service": (GRAFANA_UNIT, 0o644),
                       "/etc/default/grafana-server": (GRAFANA_DEFAULTS, 0o644),
                       "/etc/grafana/grafana.ini": ("; testbed stand-in: the server reads GF_* variables only\n",
                                                    0o644),
                       "/etc/grafana/provisioning/dashboards/sample.yaml": ("# apiVersion: 1\n", 0o644),
                       "/etc/grafana/provisioning/datasources/sample.yaml": ("# apiVersion: 1\n", 0o644)},
                scripts={"postinst": GRAFANA_POSTINST},
                description="Grafana stand-in: provisioning and a few API endpoints (debs/grafana_server.py).")]


def index_suite(keys: Path, root: Path, suite: str, pools: dict[str, str], origin: str) -> None:
    """A signed apt suite under `root`/dists/`suite`: for each component, `apt-ftparchive packages` of its pool
    directory (relative to `root`) into <component>/binary-amd64/Packages(.gz); then Release, InRelease, Release.gpg."""
    for component, pool in pools.items():
        (root / "dists" / suite / component / "binary-amd64").mkdir(parents=True, exist_ok=True)
        (root / pool).mkdir(parents=True, exist_ok=True)
        out = f"dists/{suite}/{component}/binary-amd64/Packages"
        run(["sh", "-c", f"cd '{root}' && apt-ftparchive packages {pool} > {out} && gzip -kf {out}"])
    fields = (("Origin", origin), ("Label", origin), ("Suite", suite), ("Codename", suite),
              ("Components", " ".join(pools)), ("Architectures", "amd64"))
    opts = " ".join(f"-o 'APT::FTPArchive::Release::{k}={v}'" for k, v in fields)
    run(["sh", "-c", f"cd '{root}' && apt-ftparchive {opts} release dists/{suite} > Release.tmp "
                     f"&& mv Release.tmp dists/{suite}/Release"])
    sign_release(keys, root / "dists" / suite)


def build_grafana(keys: Path, www: Path, work: Path) -> None:
    """https://apt.grafana.com: /gpg.key, dists/stable/main/binary-amd64/Packages, pool/main/g/grafana/*.deb."""
    for deb in grafana_debs():
        deb.build(work, www / "pool/main/g/grafana")
    index_suite(keys, www, "stable", {"main": "pool/main/g"}, "grafana")
    (www / "gpg.key").write_text((keys / "repo-key.asc").read_text())


def sign_release(keys: Path, d: Path) -> None:
    """InRelease and Release.gpg for `d`/Release, signed by the testbed's repo key."""
    env = gpg_env(keys)
    run(["gpg", "-q", "--batch", "--yes", "-u", REPO_UID, "--clearsign", "-o", str(d / "InRelease"),
         str(d / "Release")], env=env)
    run(["gpg", "-q", "--batch", "--yes", "-u", REPO_UID, "-abs", "-o", str(d / "Release.gpg"), str(d / "Release")],
        env=env)


def build_www(cfg: Config, www: Path) -> Path:
    """Write all three vendor repositories under `www` (the HTTPS server's root); returns `www`."""
    keys = ensure_keys(cfg)
    work = www.parent / "debbuild"
    shutil.rmtree(www, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    cuda, nvct, docker = www / CUDA_DIR, www / NVCT_DIR, www / DOCKER_DIR
    for deb in cuda_debs((keys / "repo-key.gpg").read_bytes()):
        deb.build(work, cuda)
    for deb in nvct_debs():
        deb.build(work, nvct)
    pool = docker / "dists/noble/pool/stable/amd64"
    for deb in docker_debs():
        deb.build(work, pool)
    for d in (cuda, nvct):
        run(["sh", "-c", f"cd '{d}' && apt-ftparchive packages . > Packages && gzip -kf Packages "
                         "&& apt-ftparchive release . > Release"])
        sign_release(keys, d)
    (nvct.parent / "nvidia-container-toolkit.list").write_text(
        "deb https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /\n")
    asc = (keys / "repo-key.asc").read_text()
    (www / "libnvidia-container/gpgkey").write_text(asc)
    (docker / "gpg").write_text(asc)
    index_suite(keys, docker, "noble", {"stable": "dists/noble/pool/stable"}, "Docker")
    build_grafana(keys, www, work)
    shutil.rmtree(work)
    return www
