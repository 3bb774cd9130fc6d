"""One read of a host's state: everything the deploy decides on, gathered by ONE remote command.

A no-op re-run reads each host once (this snapshot) plus the endpoint check at the end. The snapshot is kept on the
host object for the run; the one seam that drops it is `invalidate()`, called by gpu_llm.operations.operation when an
operation starts changing the host (its first command, while executing) and by an op that needs to see what its own
commands did (`fresh()`). What to read (paths, packages, units) comes from a `Probe`, built once per host and run
from the settings (gpu_llm.layout.probe) and registered with `use()`.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Any

from pyinfra.api import FactBase
from pyinfra.context import ContextObject, ctx_host

from gpu_llm.facts import MARK, JsonFact, sections
from gpu_llm.facts.container import VERIFIED_DIR
from gpu_llm.facts.docker_daemon import DaemonJson, DockerDaemonJson, parse_daemon_json
from gpu_llm.facts.files import FileState, FileStates, parse_file_states
from gpu_llm.facts.gpu import PCI_TO_VAR, GpuInventory, NvidiaGpus, parse_inventory
from gpu_llm.facts.host import HostPreflight, Preflight, parse_preflight
from gpu_llm.facts.model import ModelSnapshot, SnapshotState, VenvMarker, parse_snapshot_output
from gpu_llm.facts.nvidia import (DRIVER_PATTERNS, KERNEL_FLAVOUR, KERNEL_META, KERNEL_META_ARGS, DriverState,
                                  NvidiaDriver, parse_driver_state)
from gpu_llm.plan.container import MANAGED_LABEL, SPEC_LABEL

PART = "##gpu-llm-part:"  # not a facts.MARK line: the parts' own section markers pass through untouched
_FILE = "##gpu-llm-file:"


@dataclass(frozen=True)
class Probe:
    """What the snapshot reads on a host (plain values derived from the settings)."""

    model_dir: str  # preflight's free-disk check and the model snapshot
    download_unit: str  # the model download's transient systemd unit
    hf_venv: str  # its marker file says what pip installed
    paths: tuple[str, ...] = ()  # small files and directories the deploys manage (mode, owner, sha256)
    packages: tuple[str, ...] = ()  # apt packages whose installed version matters (driver packages always)
    sources: tuple[str, ...] = ()  # apt .list files whose lines matter
    services: tuple[str, ...] = ()  # systemd units whose active/enabled state matters

    def kwargs(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True)
class Service(JsonFact):
    active: str = ""  # `systemctl is-active`: active, inactive, failed, ... ("" without systemd)
    enabled: str = ""  # `systemctl is-enabled`: enabled, disabled, masked, ... ("" when unknown)

    @property
    def installed(self) -> bool:
        """systemd knows a unit file of this name (or runs it): `systemctl show` of an unknown unit says inactive
        with no unit-file state."""
        return bool(self.enabled) or self.active not in ("", "inactive")


@dataclass(frozen=True)
class Verified(JsonFact):
    """A vLLM container that passed the full check (its marker in VERIFIED_DIR) and what it is now."""

    marker: str = ""  # "<container id> <StartedAt>" the passing check recorded
    url: str = ""  # the endpoint it checked
    current: str = ""  # "<container id> <StartedAt>" of the container of that name now ("" when there is none)
    health: str = ""  # HTTP status of <url>/health now ("000": no answer)

    def holds(self, url: str) -> bool:
        """The same container, not restarted since its full check, on the same endpoint, and /health answers."""
        return bool(self.marker) and self.marker == self.current and self.url == url and self.health == "200"


@dataclass
class HostState(JsonFact):
    """Everything one snapshot read found. Parts reuse the parsers of the single-purpose facts."""

    preflight: HostPreflight = field(default_factory=HostPreflight)
    systemd: bool = False  # systemd is PID 1 (sd_booted(3): /run/systemd/system exists)
    driver: DriverState = field(default_factory=DriverState)
    gpus: GpuInventory = field(default_factory=lambda: GpuInventory(smi="missing"))
    packages: dict[str, list[str]] = field(default_factory=dict)  # installed: name -> [version] (DebPackages' shape)
    files: dict[str, FileState] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)  # apt .list file -> its lines (absent: missing)
    daemon: DaemonJson = field(default_factory=DaemonJson)
    services: dict[str, Service] = field(default_factory=dict)
    venv_marker: str | None = None
    model: SnapshotState = field(default_factory=lambda: SnapshotState(None))
    containers: list[dict[str, Any]] = field(default_factory=list)  # name, labels, state (PS_FORMAT) as in `docker inspect`
    images: list[str] = field(default_factory=list)  # local images as "repository:tag" and "repository@digest"
    verified: dict[str, Verified] = field(default_factory=dict)  # container name -> its last passing full check
    apt_lists: list[str] = field(default_factory=list)  # apt's Release files in /var/lib/apt/lists (file names)

    @property
    def distro(self) -> dict[str, Any]:
        """pyinfra's LinuxDistribution shape ({"name", "major", "minor", "release_meta"}) from /etc/os-release."""
        meta = self.preflight.release
        major, _, minor = meta.get("VERSION_ID", "").partition(".")
        return {"name": meta.get("NAME", ""), "major": int(major) if major.isdigit() else None,
                "minor": int(minor) if minor.isdigit() else None, "release_meta": dict(meta)}

    def service(self, name: str) -> Service:
        return self.services.get(name, Service())


# ---- the command -----------------------------------------------------------------------------------------------


_FLAVOUR = "kernel-flavour|"


def _packages_command(names: tuple[str, ...]) -> str:
    """ONE dpkg-query for every package the deploys decide on, the driver's (DRIVER_PATTERNS), the running kernel's
    headers and its flavour's metapackages (the driver part's dpkg sections: driver_dpkg_sections)."""
    quoted = " ".join(shlex.quote(n) for n in (*DRIVER_PATTERNS, *names))
    return (f'{KERNEL_FLAVOUR}; echo "{_FLAVOUR}$f"; '
            f"dpkg-query -W -f='${{db:Status-Abbrev}}|${{Package}}|${{Version}}\\n' {quoted} \"linux-headers-$k\" "
            f"{KERNEL_META_ARGS} 2>/dev/null; true")


def _sources_command(paths: tuple[str, ...]) -> str:
    return (f"for f in {' '.join(shlex.quote(p) for p in paths)}; do [ -f \"$f\" ] || continue; "
            f"echo \"{_FILE}$f\"; cat \"$f\"; echo; done; true") if paths else "true"


# systemd's unit search path for the system manager (systemd.unit(5), "Unit File Load Path"; /lib/systemd/system for
# hosts without merged /usr). Transient units (systemd-run: the model download, the image pull) have their file in
# /run/systemd/transient while loaded, a failed one included, until `reset-failed` or garbage collection.
UNIT_DIRS = ("/etc/systemd/system.control", "/run/systemd/system.control", "/run/systemd/transient",
             "/run/systemd/generator.early", "/etc/systemd/system", "/etc/systemd/system.attached",
             "/run/systemd/system", "/run/systemd/system.attached", "/run/systemd/generator",
             "/usr/local/lib/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system",
             "/run/systemd/generator.late")
SYSTEMD_BOOTED = "/run/systemd/system"  # exists while systemd is PID 1 (sd_booted(3))
NOT_FOUND = "Id=%s\\nActiveState=inactive\\nUnitFileState=\\n\\n"  # systemctl show's block for a unit it cannot find


def _services_command(names: tuple[str, ...], unit_dirs: tuple[str, ...] = UNIT_DIRS,
                      booted: str = SYSTEMD_BOOTED) -> str:
    """One `systemctl show` (Id, ActiveState, UnitFileState; units apart by an empty line) for the units with a unit
    file; for the others the block systemctl prints for a unit it cannot find, without asking it. Each unknown unit
    costs PID 1 ~2 ms of CPU to look for, and most of gpu-llm's units are absent on a host of one role (the
    gateway's and the monitoring's on a GPU host; the finished download). The names are plain units (no templates,
    no aliases): `docker` stands for docker.service, as for systemctl. Where systemd does not run (no `booted`
    directory, sd_booted(3)), systemctl is asked for all of them, as before, and answers nothing."""
    if not names:
        return "true"
    units = " ".join(shlex.quote(n) for n in names)
    dirs = " ".join(shlex.quote(d) for d in unit_dirs)
    return (f'q="{units}"; if [ -d {shlex.quote(booted)} ]; then q=; for u in {units}; do f=$u; '
            f'case "$f" in *.*) ;; *) f=$f.service;; esac; k=; '
            f'for d in {dirs}; do [ -e "$d/$f" ] && {{ k=1; break; }}; done; '
            f'if [ -n "$k" ]; then q="$q $u"; else printf \'{NOT_FOUND}\' "$f"; fi; done; fi; '
            f'[ -z "$q" ] || systemctl show -p Id -p ActiveState -p UnitFileState -- $q 2>/dev/null; true')


# Docker's state from its own API on the socket, with curl: GET /containers/json?all=1 (names, state, labels) and GET
# /images/json (tags, digests) cost ~6 ms of host CPU each, against ~16 ms for each of `docker ps` and `docker images`
# (Go start-up; measured on the testbed). The list endpoint carries no environment, so the API key from the env file
# never reaches pyinfra's -vvv output. API: https://docs.docker.com/reference/api/engine/version/v1.41/ (ContainerList,
# ImageList; stable since v1.24). Without curl or the socket, the docker CLI gives the same fields, as before.
API = "docker-api "
PS_FORMAT = f'ctr|{{{{.Names}}}}|{{{{.State}}}}|{{{{.Label "{SPEC_LABEL}"}}}}|{{{{.Label "{MANAGED_LABEL}"}}}}'
_SOCKET = "/var/run/docker.sock"
# Both answers come from one curl (its -w text after each body), split by the shell's pattern removal. The images
# answer comes first: dash's ${r#*pattern} costs the square of the length it skips (11 ms of CPU for 6 KB on a testbed
# host), and a host's images answer is the shorter one (each container is ~1.5 KB of JSON).
_END = "~gpu-llm-end~"  # not starting with @: curl reads `-w @file` from a file


def containers_command(socket: str = _SOCKET) -> str:
    sock = shlex.quote(socket)
    return (
        f"if [ -S {sock} ] && command -v curl >/dev/null 2>&1; then "
        f"r=$(curl -sf -m 20 --unix-socket {sock} -w '{_END}' http://docker/images/json "
        f"'http://docker/containers/json?all=1'); i=${{r%%{_END}*}}; r=${{r#*{_END}}}; "
        f"printf '{API}containers %s\\n' \"${{r%{_END}}}\"; printf '{API}images %s\\n' \"$i\"; "
        "elif command -v docker >/dev/null 2>&1; then "
        f"docker ps -a --no-trunc --format {shlex.quote(PS_FORMAT)} 2>/dev/null; "
        "docker images --digests --format 'image {{.Repository}}:{{.Tag}} {{.Repository}}@{{.Digest}}' "
        "2>/dev/null; fi; true")


CONTAINERS_COMMAND = containers_command()


# The endpoint check of a no-op re-run, read here: for each container a passing full check recorded (its marker
# "<id> <StartedAt> <url>", written by gpu_llm.facts.container.verify_command), the container's id and start time
# now and <url>/health's status, in ONE curl (Docker's API on the socket, then --next the endpoint). The inspect
# answer carries the container's environment (its API key): it stays in a shell variable, only the two fields are
# printed. gpu_llm.operations.vllm.verified runs the full check only where this does not hold (Verified.holds).
_V = "verified|"


def verified_command(verified_dir: str = VERIFIED_DIR, socket: str = _SOCKET) -> str:
    return (
        f'for m in {shlex.quote(verified_dir)}/verified-*; do [ -f "$m" ] || continue; n=${{m##*/verified-}}; '
        'id=; at=; url=; read -r id at url < "$m"; j=; h=; cur=; '
        f'if [ -n "$url" ] && [ -S {shlex.quote(socket)} ] && command -v curl >/dev/null 2>&1; then '
        f'j=$(curl -s -m 5 --unix-socket {shlex.quote(socket)} "http://docker/containers/$n/json" '
        '--next -s -m 5 -o /dev/null -w "~health=%{http_code}" "$url/health" 2>/dev/null); fi; '
        """case "$j" in *'"Id":"'*'"StartedAt":"'*) i=${j#*'"Id":"'}; s=${j#*'"StartedAt":"'}; """
        """cur="${i%%'"'*} ${s%%'"'*}";; esac; case "$j" in *~health=*) h=${j##*~health=};; esac; """
        f'echo "{_V}$n|$id $at|$url|$cur|$h"; done; true'
    )


PRELUDE = PCI_TO_VAR  # what the parts share: the PCI bus scanned once ($pci, $nvsw)


def snapshot_parts(probe: Probe) -> dict[str, str]:
    """{part: its shell command}, each run after PRELUDE (benchmarks/snapshot_cpu.py times them one by one)."""
    return {
        "preflight": Preflight().command(path=probe.model_dir, pci_var=True),
        "systemd": f"[ -d {SYSTEMD_BOOTED} ] && echo yes; true",
        # nvidia-smi once, in the GPU part (~25 ms of host CPU each); dpkg once, in the packages part
        "driver": NvidiaDriver().command(smi=False, dpkg=False),
        "gpus": NvidiaGpus().command(pci_var=True),
        "packages": _packages_command(probe.packages),
        "files": FileStates().command(paths=probe.paths) if probe.paths else "true",
        "sources": _sources_command(probe.sources),
        # which repositories apt has lists of (a glob: no process)
        "apt_lists": 'for f in /var/lib/apt/lists/*Release; do [ -e "$f" ] && echo "${f##*/}"; done; true',
        "daemon": DockerDaemonJson().command(),
        # the model download's unit with the others: one systemctl
        "services": _services_command((*probe.services, probe.download_unit)),
        "venv": VenvMarker().command(venv=probe.hf_venv).get_raw_value(),
        "model": ModelSnapshot().command(model_dir=probe.model_dir, unit=None).get_raw_value(),
        "download_unit": f"echo {shlex.quote(probe.download_unit)}",  # its state is in the services part
        "docker": CONTAINERS_COMMAND,
        "verified": verified_command(),
    }


def snapshot_command(probe: Probe) -> str:
    """The one shell command: the PCI bus scanned once, then each part in its own subshell, after a part marker; the
    output collected and printed at the end."""
    # a marker starts on a line of its own even when the part before ended without a newline (cat of a file)
    parts = "; ".join(f"printf '\\n{PART}{name}\\n'; ( {command} )" for name, command in snapshot_parts(probe).items())
    # written in one go: the parts' many small writes were as many SSH packets, each decrypted and MAC-checked in
    # Python by paramiko (controller CPU of a 6-host no-op run's execution phase 0.157 -> 0.116 s, 5 runs each)
    return f"o=$({PRELUDE}; {parts}); printf '%s\\n' \"$o\""


# ---- parsing (pure) ---------------------------------------------------------------------------------------------


def split_parts(lines: list[str]) -> dict[str, list[str]]:
    """{part: its lines}, without the empty line each marker's leading newline leaves at the end of a part."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if line.startswith(PART):
            current = out.setdefault(line[len(PART):].strip(), [])
        elif current is not None:
            current.append(line)
    for part in out.values():
        while part and not part[-1].strip():
            part.pop()
    return out


def parse_installed(lines: list[str]) -> dict[str, list[str]]:
    """dpkg-query `status|name|version` lines -> {name: [version]} for installed (ii/hi) packages."""
    out: dict[str, list[str]] = {}
    for line in lines:
        bits = line.split("|")
        if len(bits) == 3 and len(bits[0]) >= 2 and bits[0][1] == "i":
            out.setdefault(bits[1], []).append(bits[2].strip())
    return out


def parse_sources(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if line.startswith(_FILE):
            current = out.setdefault(line[len(_FILE):], [])
        elif current is not None and line.strip():
            current.append(line.strip())
    return out


def parse_services(lines: list[str]) -> dict[str, Service]:
    """`systemctl show -p Id -p ActiveState -p UnitFileState` blocks -> {unit: Service}, keyed by the Id with and
    without its .service suffix (the probe names docker's unit "docker")."""
    out: dict[str, Service] = {}
    block: dict[str, str] = {}
    for line in [*lines, ""]:
        key, sep, value = line.strip().partition("=")
        if sep:
            block[key] = value
            continue
        if block.get("Id"):
            unit = block["Id"]
            service = Service(block.get("ActiveState", ""), block.get("UnitFileState", ""))
            out[unit] = service
            if unit.endswith(".service"):
                out.setdefault(unit[: -len(".service")], service)
        block = {}
    return out


def _container(name: str, state: str, labels: dict[str, str]) -> dict[str, Any]:
    """The parts of `docker inspect` the deploy reads."""
    ours = {k: labels[k] for k in (SPEC_LABEL, MANAGED_LABEL) if labels.get(k)}
    return {"Name": "/" + name, "Config": {"Labels": ours}, "State": {"Running": state == "running", "Status": state}}


def _parse_api(lines: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    containers: list[dict[str, Any]] = []
    images: list[str] = []
    for line in lines:
        kind, _, body = line[len(API):].partition(" ")
        try:
            items = json.loads(body) if body.strip() else []
        except ValueError:
            items = []
        for item in items if isinstance(items, list) else []:
            if kind == "containers" and item.get("Names"):
                containers.append(_container(item["Names"][0].lstrip("/"), item.get("State", ""),
                                             item.get("Labels") or {}))
            elif kind == "images":
                images += [ref for ref in (item.get("RepoTags") or []) + (item.get("RepoDigests") or [])
                           if not ref.startswith("<none>")]
    return containers, images


def parse_docker(lines: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Docker's API answers (`docker-api containers|images <JSON>`), or the CLI's PS_FORMAT lines (one container each)
    and `image <repo:tag> <repo@digest>` lines."""
    api = [line for line in lines if line.startswith(API)]
    if api:
        return _parse_api(api)
    images = [ref for line in lines if line.startswith("image ") for ref in line.split()[1:]
              if not ref.endswith((":<none>", "@<none>"))]
    containers = []
    for line in lines:
        bits = line.strip().split("|")
        if len(bits) == 5 and bits[0] == "ctr" and bits[1]:
            containers.append(_container(bits[1], bits[2], {SPEC_LABEL: bits[3], MANAGED_LABEL: bits[4]}))
    return containers, images


def parse_verified(lines: list[str]) -> dict[str, Verified]:
    """VERIFIED_COMMAND's `verified|<name>|<id> <StartedAt>|<url>|<id> <StartedAt> now|<health status>` lines."""
    out = {}
    for line in lines:
        bits = line.strip().split("|")
        if len(bits) == 6 and bits[0] + "|" == _V and bits[1]:
            out[bits[1]] = Verified(marker=bits[2].strip(), url=bits[3], current=bits[4].strip(), health=bits[5])
    return out


def driver_dpkg_sections(packages: list[str], kernel: str) -> list[str]:
    """The driver fact's dpkg, headers and kernelmeta sections, from the packages part's one dpkg-query."""

    def named(patterns: tuple[str, ...] | list[str]) -> list[str]:
        return [line for line in packages if line.count("|") == 2
                and any(fnmatchcase(line.split("|")[1], p) for p in patterns)]

    flavour = next((line[len(_FLAVOUR):].strip() for line in packages if line.startswith(_FLAVOUR)), "")
    headers = "installed" if kernel and f"linux-headers-{kernel}" in parse_installed(packages) else "unknown"
    meta = named([p.format(f=flavour) for p in KERNEL_META]) if flavour else []
    return [f"{MARK}dpkg", *named(DRIVER_PATTERNS), f"{MARK}headers", headers, f"{MARK}kernelmeta", *meta]


def parse_snapshot(lines: list[str]) -> HostState:
    p = split_parts(lines)
    containers, images = parse_docker(p.get("docker", []))
    gpus = parse_inventory(p.get("gpus", []))
    venv = "\n".join(p.get("venv", [])).strip()
    kernel = (sections(p.get("driver", [])).get("kernel") or [""])[0].strip()
    services = parse_services(p.get("services", []))
    model = parse_snapshot_output(p.get("model", []))
    if p.get("download_unit"):
        model = replace(model, unit_state=services.get(p["download_unit"][0].strip(), Service()).active)
    return HostState(
        preflight=parse_preflight(p.get("preflight", [])),
        systemd=bool(p.get("systemd")) and p["systemd"][0].strip() == "yes",
        driver=parse_driver_state([*p.get("driver", []), *driver_dpkg_sections(p.get("packages", []), kernel)],
                                  smi=(gpus.smi, next((g.driver_version for g in gpus.gpus if g.driver_version), None),
                                       gpus.message)),
        gpus=gpus,
        packages=parse_installed(p.get("packages", [])),
        files=parse_file_states(p.get("files", [])),
        sources=parse_sources(p.get("sources", [])),
        daemon=parse_daemon_json(p.get("daemon", [])),
        services=services,
        venv_marker=venv or None,
        model=model,
        containers=containers,
        images=images,
        verified=parse_verified(p.get("verified", [])),
        apt_lists=[line.strip() for line in p.get("apt_lists", []) if line.strip()],
    )


class HostSnapshot(FactBase[HostState]):
    """
    Every piece of host state gpu-llm decides on, in one command (see Probe for what it is told to read).

    .. code:: python

        HostState(preflight=HostPreflight(os_id="ubuntu-24.04", ...), driver=DriverState(...), gpus=GpuInventory(...),
                  files={"/etc/gpu-llm": FileState("dir", 755, "root", "root")}, containers=[...], ...)
    """

    @staticmethod
    def default() -> HostState:
        return HostState()

    def command(self, model_dir: str, download_unit: str, hf_venv: str, paths: tuple[str, ...] = (),
                packages: tuple[str, ...] = (), sources: tuple[str, ...] = (), services: tuple[str, ...] = ()) -> str:
        return snapshot_command(Probe(model_dir, download_unit, hf_venv, paths, packages, sources, services))

    def process(self, output: list[str]) -> HostState:
        return parse_snapshot(output)


# ---- the seam: one snapshot per host until something changes it --------------------------------------------------

_STATE = "_gpu_llm_snapshot"  # lives on the host object: it ends with the run (and with each test's host)
_PROBE = "_gpu_llm_probe"


def real_host(host: Any) -> Any:
    return ctx_host.get() if isinstance(host, ContextObject) else host  # pyinfra's `host` proxy -> the real one


def use(host: Any, probe: Probe) -> None:
    """Tell the snapshot what to read on `host` (the deploys call this with the same probe every time)."""
    h = vars(real_host(host))
    if h.get(_PROBE) != probe:
        h[_PROBE] = probe
        h.pop(_STATE, None)


def current(host: Any) -> HostState:
    """The host's state: read once, reused until invalidate()."""
    h = vars(real_host(host))
    if _STATE not in h:
        probe = h.get(_PROBE)
        if probe is None:
            raise RuntimeError("gpu_llm.facts.snapshot.use(host, probe) was not called before reading host state")
        h[_STATE] = real_host(host).get_fact(HostSnapshot, **probe.kwargs())
    return h[_STATE]


def invalidate(host: Any) -> None:
    """Something on the host is changing: the next current() reads it again."""
    vars(real_host(host)).pop(_STATE, None)


def fresh(host: Any) -> HostState:
    """Read again now (after commands of the calling operation ran)."""
    invalidate(host)
    return current(host)

