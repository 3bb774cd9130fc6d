"""Boot and tear down a testbed: N Ubuntu 24.04 hosts (systemd-nspawn) on a private bridge with fake vendor repos.

Humans: `python -m tests.testbed.harness up [FIXTURE ...] | down | status` (root; GPU_LLM_TESTBED_ID picks
the instance). Fixture names are in tests/testbed/gpus.py (default: h200-x1 rtx2080ti-22g-x4).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import gpus as gpu_fixtures
from . import registry, secure_boot, ubuntu_archive
from .config import PROJECT, REGISTRY_HOSTS, VENDOR_HOSTS, Config
from .keys import ensure_keys
from .proc import TestbedError, run, timed
from .repos import REPO_PREFIXES, build_www
from .rootfs import docker_base
from .supervisor import cgroup_binds, cgroup_dirs
from .wheels import ensure_wheels

NEEDED_TOOLS = ("debootstrap", "systemd-nspawn", "apt-ftparchive", "dpkg-deb", "gpg", "openssl", "ssh", "ip")
# What a real dockerd + runc need inside nspawn on a cgroup-v1 machine (shared/reference/testbed-recipe.sh);
# writable cgroups come from cgroup_binds().
NSPAWN_DOCKER = ["--capability=all", "--system-call-filter=@keyring bpf", "--tmpfs=/sys/fs/cgroup"]
# Processes of ours that stop at once on SIGTERM (the hosts' supervisors get 90 s to power their guest off).
QUICK_TO_STOP = {"vendor-server", *registry.PROCESSES}


class TestbedUnavailable(TestbedError):
    """This machine cannot run the testbed (not root, tools missing): tests skip with this reason."""

    __test__ = False  # not a pytest test class


@dataclass
class Host:
    """One booted host; `ssh` runs a shell command on it as root."""

    cfg: Config
    n: int
    fixture: str
    secure_boot: bool = False  # mokutil reports Secure Boot on; unsigned (DKMS) NVIDIA modules do not load

    @property
    def name(self) -> str:
        return self.cfg.host_name(self.n)

    @property
    def ip(self) -> str:
        return self.cfg.host_ip(self.n)

    @property
    def netns(self) -> str:
        return f"{self.cfg.prefix}{self.name}"

    @property
    def cgroup(self) -> str:
        return f"{self.cfg.prefix}{self.name}"

    @property
    def root(self) -> Path:
        return self.cfg.state / "hosts" / self.name

    @property
    def key(self) -> Path:
        return self.cfg.cache / "keys" / "id_ed25519"

    @property
    def gpus(self) -> list[dict]:
        return gpu_fixtures.FIXTURES[self.fixture]

    @property
    def nvswitches(self) -> list[dict]:
        """The fixture's NVSwitches on the fake PCI bus (gpus.NVSWITCHES; none for most fixtures)."""
        return gpu_fixtures.NVSWITCHES.get(self.fixture, [])

    def ssh_args(self) -> list[str]:
        return ["ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", f"root@{self.ip}"]

    def ssh(self, cmd: str, *, check: bool = False, timeout: float = 300,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*self.ssh_args(), cmd], capture_output=True, text=True, timeout=timeout, input=input)
        if check and res.returncode != 0:
            raise TestbedError(f"{self.name}: {cmd!r} -> rc {res.returncode}\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
        return res

    def wait_ssh(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.ssh("true", timeout=10).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.5)
        raise TestbedError(f"{self.name} ({self.ip}) not reachable over ssh after {timeout:.0f}s; "
                           f"see {self.cfg.state / (self.name + '.log')}")

    def boot_mark(self) -> str:
        """Start time of the guest's PID 1 (the kernel's boot_id is the machine's, not the container's)."""
        return self.ssh("cut -d' ' -f22 /proc/1/stat", check=True).stdout.strip()

    def reboot(self, timeout: float = 180) -> None:
        """`systemctl reboot` in the guest and wait until it is back (a new PID 1, ssh up, boot finished)."""
        before = self.boot_mark()
        self.ssh("systemctl reboot", timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                res = self.ssh("cut -d' ' -f22 /proc/1/stat; systemctl is-system-running --wait", timeout=60)
            except subprocess.TimeoutExpired:
                continue
            mark = res.stdout.split()[:1]
            if mark and mark[0] != before and res.returncode in (0, 1):
                return
        raise TestbedError(f"{self.name} did not come back from reboot within {timeout:.0f}s")


def _require_machine() -> None:
    if os.geteuid() != 0:
        raise TestbedUnavailable("the e2e testbed needs root (systemd-nspawn, netns, bridge)")
    missing = [t for t in NEEDED_TOOLS if shutil.which(t) is None]
    if missing:
        raise TestbedUnavailable(f"missing tools {missing}: run .ci/e2e-setup as root")


class Testbed:
    """One testbed instance (GPU_LLM_TESTBED_ID); its state lives in cfg.state (hosts.json, logs, host roots)."""

    __test__ = False  # not a pytest test class

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg or Config.from_env()
        self.hosts: list[Host] = []
        if self._state_file.exists():
            saved = json.loads(self._state_file.read_text())
            self.hosts = [Host(self.cfg, h["n"], h["fixture"], h.get("secure_boot", False)) for h in saved["hosts"]]

    @property
    def _state_file(self) -> Path:
        return self.cfg.state / "hosts.json"

    @property
    def www(self) -> Path:
        return self.cfg.state / "www"

    @property
    def wheels_url(self) -> str:
        return f"http://{self.cfg.bridge_ip}:{self.cfg.wheels_port}/wheels/"

    @property
    def pip_args(self) -> list[str]:
        """hf_pip_args for inventories: install from the testbed's wheel directory only."""
        return ["--no-index", "--find-links", self.wheels_url, "--trusted-host", self.cfg.bridge_ip]

    # ---- up ------------------------------------------------------------------------------------------------
    def prepare(self) -> Path:
        """Build or reuse everything cached (keys, rootfs, wheels); raises TestbedUnavailable/ArchiveUnreachable."""
        _require_machine()
        ensure_keys(self.cfg)
        ensure_wheels(self.cfg)
        base = docker_base(self.cfg)
        ubuntu_archive.real_pool(self.cfg)
        return base

    def up(self, fixtures: list[str]) -> list[Host]:
        for f in fixtures:
            if f not in gpu_fixtures.FIXTURES:
                raise ValueError(f"GPU fixture {f!r}: allowed are {sorted(gpu_fixtures.FIXTURES)}")
        base = self.prepare()
        self.down()
        self.cfg.state.mkdir(parents=True, exist_ok=True)
        with timed(f"testbed {self.cfg.tid}: network + vendor repos"):
            self._bridge()
            build_www(self.cfg, self.www)
            keys = self.cfg.cache / "keys"
            ubuntu_archive.build_archive(self.cfg, self.www, keys, (keys / "repo-key.gpg").read_bytes())
            self._start_server()
        with timed(f"testbed {self.cfg.tid}: boot {len(fixtures)} hosts to ssh"):
            for n, fixture in enumerate(fixtures, start=1):
                self._boot(Host(self.cfg, n, fixture), base)
            for h in self.hosts:
                h.wait_ssh()
                h.ssh("systemctl is-system-running --wait", timeout=120)
        return self.hosts

    def add_host(self, fixture: str, secure_boot: bool = False) -> Host:
        """Boot one more host on a running testbed; `secure_boot`: it reports Secure Boot on (mokutil) and its
        module stand-in refuses unsigned (DKMS-built) NVIDIA modules, as a real Secure Boot host does."""
        if fixture not in gpu_fixtures.FIXTURES:
            raise ValueError(f"GPU fixture {fixture!r}: allowed are {sorted(gpu_fixtures.FIXTURES)}")
        host = Host(self.cfg, max((h.n for h in self.hosts), default=0) + 1, fixture, secure_boot)
        self._boot(host, docker_base(self.cfg))
        host.wait_ssh()
        host.ssh("systemctl is-system-running --wait", timeout=120)  # as up() does: booted, not only sshd
        return host

    def _save(self) -> None:
        self._state_file.write_text(json.dumps({"hosts": [{"n": h.n, "fixture": h.fixture, "secure_boot": h.secure_boot}
                                                          for h in self.hosts]}))

    def _bridge(self) -> None:
        br, ip = self.cfg.bridge, self.cfg.bridge_ip
        run(["ip", "link", "add", br, "type", "bridge"])
        run(["ip", "addr", "add", f"{ip}/24", "dev", br])
        run(["ip", "addr", "add", f"{self.cfg.registry_ip}/24", "dev", br])  # the registry's (registry.py)
        run(["ip", "link", "set", br, "up"])

    def _start_server(self) -> None:
        keys = self.cfg.cache / "keys"
        http_root = self.cfg.state / "http"
        http_root.mkdir(exist_ok=True)
        (http_root / "wheels").symlink_to(ensure_wheels(self.cfg))
        log = open(self.cfg.state / "vendor-server.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "tests.testbed.vendor_server", self.cfg.bridge_ip,
                                 str(self.www), str(http_root), str(self.cfg.wheels_port), str(keys / "srv.crt"),
                                 str(keys / "srv.key"), str(self.cfg.state / "disabled-repos")],
                                cwd=PROJECT, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        (self.cfg.state / "vendor-server.pid").write_text(str(proc.pid))
        for _ in range(50):
            if run(["curl", "-sf", "-o", "/dev/null", "--cacert", str(keys / "ca.crt"), "--resolve",
                    f"download.docker.com:443:{self.cfg.bridge_ip}", "https://download.docker.com/linux/ubuntu/gpg"],
                   check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise TestbedError(f"vendor server did not start; see {self.cfg.state / 'vendor-server.log'}")

    def _prepare_root(self, host: Host, base: Path) -> None:
        r = host.root
        shutil.rmtree(r, ignore_errors=True)
        r.parent.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", str(base), str(r)])
        (r / "etc/hostname").write_text(host.name + "\n")
        (r / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {host.name}\n::1 localhost ip6-localhost\n"
                                     f"{self.cfg.bridge_ip} {' '.join(VENDOR_HOSTS + ubuntu_archive.ARCHIVE_HOSTS)}\n"
                                     f"{self.cfg.registry_ip} {' '.join(REGISTRY_HOSTS)}\n")
        keys = self.cfg.cache / "keys"
        shutil.copy(keys / "ca.crt", r / "usr/local/share/ca-certificates/gpu-llm-testbed-ca.crt")
        run(["chroot", str(r), "update-ca-certificates"])
        ubuntu_archive.install_source(r, (keys / "repo-key.gpg").read_bytes())
        run(["chroot", str(r), "ssh-keygen", "-A"])
        ssh_dir = r / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        shutil.copy(keys / "id_ed25519.pub", ssh_dir / "authorized_keys")
        switches = host.nvswitches
        gpu_fixtures.write_gpus_json(host.gpus, r / "etc/gpu-llm-testbed/gpus.json")
        gpu_fixtures.write_gpus_json(switches, r / "etc/gpu-llm-testbed/nvswitches.json")
        gpu_fixtures.install_pci_view(host.gpus + switches, r)
        if host.secure_boot:
            secure_boot.install(r)
        else:  # mokutil as on a UEFI host without Secure Boot (the machine's own EFI variables stay out of it)
            secure_boot.install_mokutil(r, enabled=False)

    def _boot(self, host: Host, base: Path) -> None:
        self._prepare_root(host, base)
        ns, veth = host.netns, host.netns
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "host0", "netns", ns])
        run(["ip", "link", "set", veth, "master", self.cfg.bridge, "up"])
        run(["ip", "-n", ns, "addr", "add", f"{host.ip}/24", "dev", "host0"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", ns, "link", "set", "host0", "up"])
        nspawn = ["systemd-nspawn", "--boot", f"--directory={host.root}", f"--machine={host.netns}",
                  "--register=no", "--keep-unit", f"--network-namespace-path=/run/netns/{ns}", "--resolv-conf=off",
                  "--link-journal=no", "--console=passive", *NSPAWN_DOCKER,
                  *(f"--bind={src}:{dst}" for src, dst in cgroup_binds(host.cgroup))]
        log = self.cfg.state / f"{host.name}.log"
        proc = subprocess.Popen([sys.executable, "-m", "tests.testbed.supervisor", host.cgroup, str(log), "--",
                                 *nspawn], cwd=PROJECT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(log, "ab"), start_new_session=True,
                                # /proc/sys/net writable in the guest's own netns: dockerd sets ip_forward
                                env={**os.environ, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"})
        (self.cfg.state / f"{host.name}.pid").write_text(str(proc.pid))
        self.hosts.append(host)
        self._save()

    # ---- registry (Docker Hub's stand-in, tests/testbed/registry.py) ----------------------------------------
    def start_registry(self, rate_kib: float | None = None) -> None:
        """Serve https://registry-1.docker.io to the guests (images.push_vllm_image puts images there), sending
        at most `rate_kib` KiB/s to all guests together (None: unlimited); no-op but the rate if it runs."""
        registry.start(self.cfg, rate_kib)

    def set_registry_rate(self, rate_kib: float | None) -> None:
        registry.set_rate(self.cfg, rate_kib)

    def stop_registry(self) -> None:
        """Guests' pulls fail (connection refused) until start_registry(); pushed images are kept."""
        registry.stop(self.cfg)

    # ---- repos ---------------------------------------------------------------------------------------------
    def break_repo(self, repo: str) -> None:
        """Stop serving one vendor repo ("cuda", "container-toolkit", "docker"): every path under it is 404."""
        if repo not in REPO_PREFIXES:
            raise ValueError(f"repo {repo!r}: allowed are {sorted(REPO_PREFIXES)}")
        f = self.cfg.state / "disabled-repos"
        current = set(f.read_text().split()) if f.exists() else set()
        f.write_text("\n".join(sorted(current | {REPO_PREFIXES[repo]})) + "\n")

    def restore_repos(self) -> None:
        (self.cfg.state / "disabled-repos").unlink(missing_ok=True)

    # ---- down ----------------------------------------------------------------------------------------------
    def down(self) -> None:
        """Remove everything this testbed id made: processes, cgroups, netns, links, mounts, host roots."""
        st = self.cfg.state
        pidfiles = sorted(st.glob("*.pid")) if st.exists() else []
        _stop_pids({int(f.read_text()): 5 if f.stem in QUICK_TO_STOP else 90 for f in pidfiles})
        for pidfile in pidfiles:
            pidfile.unlink()
        for d in _our_cgroups(self.cfg.prefix):
            _kill_cgroup(d)
        for d in _our_cgroups(self.cfg.prefix):
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                sub.rmdir()
            d.rmdir()
        out = run(["ip", "-j", "netns", "list"]).stdout.strip()
        for ns in json.loads(out) if out else []:
            if ns["name"].startswith(self.cfg.prefix):
                run(["ip", "netns", "del", ns["name"]])
        for link in json.loads(run(["ip", "-j", "link", "show"]).stdout):
            if link["ifname"].startswith(self.cfg.prefix) or link["ifname"] == self.cfg.bridge:
                run(["ip", "link", "del", link["ifname"]], check=False)
        if st.exists():
            for line in reversed(Path("/proc/mounts").read_text().splitlines()):
                if line.split()[1].startswith(str(st) + "/"):
                    run(["umount", "-l", line.split()[1]], check=False)
            for name in ("hosts", "pci", "http", "www", "debbuild", registry.data_dir(self.cfg).name):
                shutil.rmtree(st / name, ignore_errors=True)
            for f in ("hosts.json", "disabled-repos", registry.rate_file(self.cfg).name,
                      registry.proxy_log(self.cfg).name):
                (st / f).unlink(missing_ok=True)
        for h in self.hosts:
            for leftover in Path("/run/systemd/nspawn").glob(f"*/{h.netns}"):
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
        self.hosts = []

    def leftovers(self) -> list[str]:
        """What of this testbed still exists on the machine (empty after a clean down())."""
        found = [f"cgroup {d}" for d in _our_cgroups(self.cfg.prefix)]
        out = run(["ip", "-j", "netns", "list"]).stdout.strip()
        found += [f"netns {n['name']}" for n in (json.loads(out) if out else []) if n["name"].startswith(self.cfg.prefix)]
        found += [f"link {link['ifname']}" for link in json.loads(run(["ip", "-j", "link", "show"]).stdout)
                  if link["ifname"].startswith(self.cfg.prefix) or link["ifname"] == self.cfg.bridge]
        found += [f"mount {line.split()[1]}" for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.cfg.state) + "/")]
        found += [f"process {p.name}: {' '.join(_cmdline(p))[:120]}" for p in Path("/proc").glob("[0-9]*")
                  if any(str(self.cfg.state) in a or f"--machine={self.cfg.prefix}" in a for a in _cmdline(p))]
        found += [f"registry data {d}" for d in [registry.data_dir(self.cfg)] if d.exists()]
        return found

    def status(self) -> dict:
        st = self.cfg.state
        pids = {p.stem: int(p.read_text()) for p in st.glob("*.pid")} if st.exists() else {}
        return {"id": self.cfg.tid, "bridge": self.cfg.bridge, "bridge_ip": self.cfg.bridge_ip,
                "wheels_url": self.wheels_url, "state": str(st),
                "processes": {k: (v, _alive(v)) for k, v in pids.items()},
                "hosts": [{"name": h.name, "ip": h.ip, "gpus": h.fixture,
                           "ssh": " ".join(h.ssh_args())} for h in self.hosts]}


def _cmdline(p: Path) -> list[str]:
    try:
        return (p / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _stop_pids(graces: dict[int, float]) -> None:
    """SIGTERM the processes we started, all at once (each supervisor powers its guest off in parallel);
    SIGKILL any still alive after its grace in seconds."""
    start = time.monotonic()
    waiting = {pid: grace for pid, grace in graces.items() if _alive(pid)}
    for pid in waiting:
        os.kill(pid, signal.SIGTERM)
    while waiting:
        for pid, grace in list(waiting.items()):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    del waiting[pid]
                    continue
            except ChildProcessError:  # not our child (started by an earlier `up`)
                pass
            if not _alive(pid):
                del waiting[pid]
            elif time.monotonic() - start > grace:
                os.kill(pid, signal.SIGKILL)
                del waiting[pid]
        time.sleep(0.2)


def _our_cgroups(prefix: str) -> list[Path]:
    return [d for h in cgroup_dirs("") for d in h.glob(f"{prefix}*") if d.is_dir()]


def _kill_cgroup(d: Path) -> None:
    """SIGKILL whatever still runs in one of our cgroups (a guest that did not power off)."""
    for _ in range(300):  # 30 s: a process in uninterruptible I/O dies only when that I/O ends
        pids = [int(p) for f in d.rglob("cgroup.procs") for p in f.read_text().split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    raise TestbedError(f"processes left in {d} after SIGKILL")


def main(argv: list[str]) -> int:
    cmd, args = (argv[0], argv[1:]) if argv else ("status", [])
    tb = Testbed()
    if cmd == "up":
        with timed("testbed up"):
            hosts = tb.up(args or ["h200-x1", "rtx2080ti-22g-x4"])
        for h in hosts:
            print(f"{h.name} {h.ip} gpus={h.fixture}: {' '.join(h.ssh_args())}")
    elif cmd == "down":
        with timed("testbed down"):
            tb.down()
        left = tb.leftovers()
        print("left behind:", left or "nothing")
        return 1 if left else 0
    elif cmd == "status":
        print(json.dumps(tb.status(), indent=2))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
