"""NVIDIA's CUDA apt repository, the pinned driver (install / keep / refuse / replace) and the reboot it may need."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pyinfra import host
from pyinfra.api import StringCommand
from pyinfra.operations import apt, server

from gpu_llm.facts import snapshot
from gpu_llm.facts.nvidia import AptShow, DriverState
from gpu_llm.layout import (
    CUDA_REPO_DIRS,
    PERSISTENCED_DROPIN,
    STATE_DIR,
    UNATTENDED_KERNEL_CONF,
    cuda_source,
    keyring_deb,
)
from gpu_llm.operations import (
    download_naming_url,
    operation,
    packages,
    refuse,
    services,
    warn,
)
from gpu_llm.operations import files as gpu_files
from gpu_llm.plan import datacenter

CUDA_KEYRING = "/usr/share/keyrings/cuda-archive-keyring.gpg"  # installed by the cuda-keyring package
# Metapackages that pull whichever flavour is newest; next to ours at the same version they are no conflict.
NEUTRAL_METAPACKAGES = ("nvidia-open", "cuda-drivers")


def distro_id(distro: dict) -> str:
    """pyinfra's LinuxDistribution shape (HostState.distro) -> "ubuntu-24.04"."""
    meta = distro.get("release_meta") or {}
    return f"{meta.get('ID', '')}-{meta.get('VERSION_ID', '')}".lower()


def cuda_repo_dir(distro: dict) -> str | None:
    return CUDA_REPO_DIRS.get(distro_id(distro))


@dataclass(frozen=True)
class DriverSpec:
    """The driver we want: apt `packages` at `package_version` (all parts of release `version`)."""

    version: str
    packages: tuple[str, ...]
    package_version: str

    def matches(self, package_version: str) -> bool:
        return package_version.split(":")[-1].startswith(self.version + "-")


def driver_spec(distro: str, branch: str, version: str, open_modules: bool, source: str = "nvidia") -> DriverSpec:
    """Package names and version string in NVIDIA's CUDA repository, or (source "ubuntu") Ubuntu's -server driver
    metapackage, whose archive version ("570.172.08-0ubuntu0.24.04.1") is read from apt when installing.

    Ubuntu: nvidia-driver-<branch>[-open] at "<version>-0ubuntu1" (NVIDIA's ubuntu2204/ubuntu2404 repos, e.g.
    public install scripts pin `nvidia-driver-570-open=570.133.20-0ubuntu1` and its libnvidia-*-570 / nvidia-*-570
    siblings at the same version). Debian: nvidia-open (open modules) or cuda-drivers at "<version>-1"."""
    if source == "ubuntu":  # the headless metapackage without DKMS (datacenter.ubuntu_driver says why)
        return DriverSpec(version, (f"nvidia-headless-no-dkms-{branch}-server" + ("-open" if open_modules else ""),),
                          f"{version}-*")
    if distro.startswith("debian"):
        return DriverSpec(version, ("nvidia-open",) if open_modules else ("cuda-drivers",), f"{version}-1")
    name = f"nvidia-driver-{branch}" + ("-open" if open_modules else "")
    return DriverSpec(version, (name,), f"{version}-0ubuntu1")


@dataclass(frozen=True)
class DriverDecision:
    """kind: "ok" | "install" | "replace" | "conflict" | "foreign" | "foreign-too-old"; `remove`: packages to purge."""

    kind: str
    detail: str
    remove: tuple[str, ...] = ()


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(".") if x.isdigit())


def decide_driver(state: DriverState, spec: DriverSpec, replace: bool, required_cuda: str | None) -> DriverDecision:
    """What to do about the driver, from the host's DriverState (pure)."""
    drivers = state.drivers
    ours = {n for n, p in drivers.items() if n in spec.packages and spec.matches(p.version)}
    # any other driver metapackage is a different driver, except a flavour-neutral one or the headless subset of a
    # driver at our version
    others = {n: p for n, p in drivers.items()
              if n not in ours and not ((n in NEUTRAL_METAPACKAGES or n.startswith("nvidia-headless-no-dkms-"))
                                        and spec.matches(p.version))}
    want_text = ", ".join(spec.packages) + f" {spec.package_version}"
    if others:
        have = ", ".join(f"{n} {p.version}" for n, p in sorted(others.items()))
        if not replace:
            return DriverDecision("conflict", f"the host has NVIDIA driver {have} from apt but gpu-llm installs "
                                  f"{want_text}; set nvidia_driver_replace: true to replace it, or set "
                                  "nvidia_driver_branch/nvidia_driver_version to what is installed")
        old_versions = {p.version for p in others.values()}
        remove = tuple(sorted(n for n, p in state.packages.items() if p.version in old_versions))
        return DriverDecision("replace", f"replace {have} with {want_text}", remove)
    if len(ours) == len(spec.packages):
        return DriverDecision("ok", f"{want_text} is installed")
    running = state.running_version
    if not drivers and (running or state.smi == "ok"):
        where = f"driver {running or '(version unknown)'}"
        if state.smi_cuda and required_cuda and _version_tuple(state.smi_cuda) < _version_tuple(required_cuda):
            return DriverDecision("foreign-too-old", f"the host runs NVIDIA {where} not installed by apt (runfile or "
                                  f"cloud image) and it supports CUDA {state.smi_cuda}, but CUDA {required_cuda} is "
                                  "needed; upgrade it yourself, or remove it so gpu-llm can install "
                                  f"{want_text}")
        cuda = f"CUDA {state.smi_cuda}" if state.smi_cuda else "CUDA version unknown"
        return DriverDecision("foreign", f"NVIDIA {where} ({cuda}) was not installed by apt (runfile or cloud "
                              f"image); gpu-llm leaves it as it is and does not install {want_text}")
    return DriverDecision("install", f"install {want_text}")


def host_driver_spec(branch: str, version: str, open_modules: bool, source: str = "nvidia") -> DriverSpec:
    """driver_spec for the distro of the host being operated on."""
    return driver_spec(distro_id(snapshot.current(host).distro), branch, version, open_modules, source)


def host_driver_decision(branch: str, version: str, open_modules: bool, replace: bool,
                         required_cuda: str | None, source: str = "nvidia") -> DriverDecision:
    """decide_driver for the host being operated on, from its snapshot."""
    spec = host_driver_spec(branch, version, open_modules, source)
    return decide_driver(snapshot.current(host).driver, spec, replace, required_cuda)


def keeps_foreign_driver(branch: str, version: str, open_modules: bool, replace: bool,
                         required_cuda: str | None, source: str = "nvidia") -> bool:
    """At execution time: does the host run a driver gpu-llm leaves alone (not installed by apt)?

    For `_if=` of the steps that only make sense with our apt driver (pin, unattended-upgrades, nouveau)."""
    return host_driver_decision(branch, version, open_modules, replace, required_cuda, source).kind in (
        "foreign", "foreign-too-old")


UBUNTU_ARCHIVE = "Ubuntu's archive (restricted)"


def ubuntu_install(branch: str, version: str, open_modules: bool, kernel: str) -> tuple[list[str], str, bool]:
    """At execution time: the `apt-get install` arguments of Ubuntu's signed driver for the running kernel, from the
    versions apt offers ([], why not, when it cannot be driver `version` exactly); the last item says whether apt's
    lists know the driver package at all (not yet on a host whose lists were never refreshed)."""
    try:
        want = datacenter.ubuntu_driver(branch, open_modules, kernel)
    except ValueError as exc:
        return [], f"{exc}: Canonical's precompiled modules exist only for Ubuntu kernels (nvidia_driver_source)", True
    stanzas = host.get_fact(AptShow, packages=(want.driver, want.utils, want.modules_kernel))
    known = any(st.package == want.driver for st in stanzas)
    chosen, why = datacenter.choose_version(stanzas, want.driver, version, branch, UBUNTU_ARCHIVE)
    if chosen is None:
        return [], why, known
    utils, why = datacenter.choose_version(stanzas, want.utils, version, branch, UBUNTU_ARCHIVE)
    if utils is None:
        return [], why, known
    if not any(st.package == want.modules_kernel for st in stanzas):
        return [], (f"{want.modules_kernel} (Canonical's signed modules for the running kernel {kernel}) is not in "
                    "apt; boot a kernel Ubuntu ships them for, or set nvidia_driver_source: nvidia"), known
    modules, why = datacenter.choose_modules(stanzas, want.modules_kernel, version)
    if modules is None:
        return [], why, known
    return [f"{want.driver}={chosen}", f"{want.utils}={utils}", want.modules_flavour,
            f"{want.modules_kernel}={modules}"], "", known


def secure_boot_check(decision: DriverDecision, source: str) -> str | None:
    """secure_boot_refusal for the host being operated on."""
    return datacenter.secure_boot_refusal(snapshot.current(host).preflight.secure_boot, source, decision.kind)


def holds_missing(state: DriverState, spec: DriverSpec) -> list[str]:
    """Installed packages of our driver release that apt-mark has not held yet."""
    return sorted(n for n, p in state.packages.items() if spec.matches(p.version) and not p.held)


def with_headers(state: DriverState) -> DriverState:
    """`state` with the kernel headers' "unknown" (not installed; the host snapshot does not ask apt) resolved to
    "available" or "missing" from apt's lists: only a DKMS install needs to know."""
    if state.headers != "unknown" or not state.kernel:
        return state
    found = host.get_fact(AptShow, packages=(f"linux-headers-{state.kernel}",))
    return replace(state, headers="available" if found else "missing")


def _install_command(state: DriverState, spec: DriverSpec, replacing: bool) -> StringCommand:
    parts = [packages.apt_get("install"), "--no-install-recommends"]
    if replacing:
        parts += ["--allow-downgrades", "--allow-change-held-packages"]
    if state.headers == "available":
        parts.append(f"linux-headers-{state.kernel}")
    parts += [f"{p}={spec.package_version}" for p in spec.packages]
    return StringCommand(*parts)


@operation()
def cuda_repo(base_url: str, keyring_version: str):
    """
    Add NVIDIA's CUDA apt repository for the host's distro: cuda-keyring .deb (the signing key) + the source line.

    + base_url: NVIDIA's repository root, e.g. https://developer.download.nvidia.com/compute/cuda/repos
    + keyring_version: cuda-keyring package version, e.g. "1.1-1"

    **Example:**

    .. code:: python

        nvidia.cuda_repo(name="Add NVIDIA's CUDA repository", base_url=URL, keyring_version="1.1-1")
    """
    distro = snapshot.current(host).distro
    repo_dir = cuda_repo_dir(distro)
    if repo_dir is None:
        yield refuse(f"NVIDIA's CUDA repository has no directory for {distro_id(distro)}"
                     f" (known: {', '.join(CUDA_REPO_DIRS)})")
        return
    url = f"{base_url.rstrip('/')}/{repo_dir}/x86_64"
    deb = keyring_deb(keyring_version)
    yield from gpu_files.directory._inner(path=STATE_DIR, mode="755")
    # download then install from the path: apt.deb(src=URL) re-downloads to a name without .deb and is never a noop
    if not gpu_files.downloaded(deb, "644"):
        yield from download_naming_url(f"{url}/cuda-keyring_{keyring_version}_all.deb", deb, "nvidia_cuda_repo_url")
    # apt.deb's own check (the .deb's name and version installed), from the name and version in the file's name
    if keyring_version in snapshot.current(host).packages.get("cuda-keyring", ()):
        host.noop(f"deb {deb} is installed")
    else:
        yield from apt.deb._inner(src=deb)  # the keyring package adds a source
    yield from packages.repo._inner(src=f"deb [signed-by={CUDA_KEYRING}] {url}/ /", filename=cuda_source(repo_dir))


@operation()
def driver_check(branch: str, version: str, open_modules: bool = True, replace: bool = False,
                 required_cuda: str | None = None, source: str = "nvidia"):
    """
    Refuse now, before anything on the host changes, a driver that nvidia.driver would refuse later (a different
    apt driver without `replace`, a driver not from apt too old for `required_cuda`, NVIDIA's unsigned DKMS modules
    on a Secure Boot host, an Ubuntu archive that cannot give `version` exactly); arguments as nvidia.driver.

    **Example:**

    .. code:: python

        nvidia.driver_check(name="Check the host's NVIDIA driver", branch="570", version="570.153.02")
    """
    decision = host_driver_decision(branch, version, open_modules, replace, required_cuda, source)
    refusal = secure_boot_check(decision, source)
    if decision.kind in ("conflict", "foreign-too-old") or refusal:
        yield refuse(refusal or decision.detail)
        return
    if source == "ubuntu" and decision.kind in ("install", "replace"):
        _, why, known = ubuntu_install(branch, version, open_modules, snapshot.current(host).driver.kernel)
        if why and known:  # without Ubuntu's lists yet (a fresh host) the driver step checks after its apt update
            yield refuse(why)
            return
    boot = snapshot.current(host).preflight.secure_boot
    host.noop(f"NVIDIA driver: {decision.detail}" + (" (Secure Boot on: Ubuntu's signed modules)" if boot else ""))


@operation()
def driver(branch: str, version: str, open_modules: bool = True, replace: bool = False,
           required_cuda: str | None = None, source: str = "nvidia"):
    """
    Install the NVIDIA driver `version` from NVIDIA's repository and hold it; keep it if installed; refuse a
    different apt driver unless `replace`; leave a driver not installed by apt (runfile, cloud image) alone.

    + branch: driver branch, e.g. "570"
    + version: exact driver version, e.g. "570.153.02"
    + open_modules: the -open kernel modules (Turing and newer) instead of the proprietary ones
    + replace: purge a different apt-installed driver and install ours
    + required_cuda: CUDA release a driver not from apt must support ("12.8"), None to skip the check
    + source: "nvidia" (NVIDIA's CUDA repository, DKMS) or "ubuntu" (Ubuntu's -server driver with Canonical's
      signed modules for the running kernel and its flavour's metapackage, which follows kernel upgrades)

    **Example:**

    .. code:: python

        nvidia.driver(name="Install NVIDIA driver 570.153.02", branch="570", version="570.153.02")
    """
    spec = host_driver_spec(branch, version, open_modules, source)
    state = snapshot.current(host).driver
    decision = decide_driver(state, spec, replace, required_cuda)
    refusal = secure_boot_check(decision, source)
    if decision.kind in ("conflict", "foreign-too-old") or refusal:
        yield refuse(refusal or decision.detail)
        return
    install: list[str] = []
    if source == "ubuntu" and decision.kind in ("install", "replace"):
        install, why, _ = ubuntu_install(branch, version, open_modules, state.kernel)
        if why:
            yield refuse(why)
            return
    if decision.kind == "foreign":
        warn(host, decision.detail)
        host.noop(decision.detail)
        return
    if decision.kind == "replace":
        held = [n for n in decision.remove if state.packages[n].held]
        if held:
            yield StringCommand("apt-mark", "unhold", *held)
        yield StringCommand(packages.apt_get("purge"), "--allow-change-held-packages", *decision.remove)
    if decision.kind in ("install", "replace"):
        if install:  # Ubuntu's: signed modules, no DKMS build (no headers needed)
            yield StringCommand(packages.apt_get("install"), "--no-install-recommends",
                                *(["--allow-downgrades", "--allow-change-held-packages"]
                                  if decision.kind == "replace" else []), *install)
        else:
            state = with_headers(state)
            if state.headers == "missing":
                warn(host, f"linux-headers-{state.kernel} is not in apt: DKMS cannot build the driver for the "
                           "running kernel; boot a distro kernel")
            yield _install_command(state, spec, replacing=decision.kind == "replace")
        state = snapshot.fresh(host).driver  # read after the install ran (execution time)
    elif source == "ubuntu" and decision.kind == "ok" and state.kernel:
        modules = f"linux-modules-nvidia-{branch}-server{'-open' if open_modules else ''}-{state.kernel}"
        if modules not in snapshot.current(host).packages:  # a kernel without our modules (booted another one)
            chosen, why = datacenter.choose_modules(host.get_fact(AptShow, packages=(modules,)), modules, version)
            if chosen is None:
                yield refuse(f"the running kernel {state.kernel} has no signed NVIDIA modules installed: {why}")
                return
            yield StringCommand(packages.apt_get("install"), "--no-install-recommends", f"{modules}={chosen}")
            state = snapshot.fresh(host).driver
    to_hold = holds_missing(state, spec)
    if to_hold:
        yield StringCommand("apt-mark", "hold", *to_hold)
    elif decision.kind == "ok":
        host.noop(decision.detail + " and held")


def unattended_kernel_conf(names: list[str]) -> bytes:
    """unattended-upgrades' blacklist of the kernel metapackages `names` (regular expressions matched at the start of
    package names: each name ends with $, so linux-image-generic does not cover linux-image-generic-hwe-24.04)."""
    lines = ["// Managed by gpu-llm (nvidia_driver_source: ubuntu): Canonical's signed NVIDIA modules exist for a new",
             "// kernel only at the archive's newest 570 release, so with the driver pinned a kernel upgrade would boot",
             "// without a driver. Move the kernel together with nvidia_driver_version (apt-mark unhold these).",
             "Unattended-Upgrade::Package-Blacklist {", *(f'    "{n}$";' for n in names), "};"]
    return ("\n".join(lines) + "\n").encode()


@operation()
def kernel_hold(source: str = "nvidia"):
    """
    With Ubuntu's signed driver (`source` "ubuntu"): hold the running kernel flavour's installed metapackages
    (linux[-image|-headers]-<flavour>[-hwe-24.04]) and keep unattended-upgrades away from them. Canonical builds the
    signed modules of a new kernel (linux-modules-nvidia-<branch>-server[-open]-<kernel>) against the archive's
    newest driver release; with nvidia-kernel-common-<branch>-server pinned and held at ours they cannot be installed,
    yet linux-image-<flavour> would still move and the host would reboot into a kernel without a driver. Moving the
    kernel therefore means moving nvidia_driver_version to a release Canonical built modules for (README).

    + source: nvidia_driver_source; "nvidia" (DKMS builds for each kernel) needs nothing here

    **Example:**

    .. code:: python

        nvidia.kernel_hold(name="Hold the kernel metapackages", source="ubuntu")
    """
    if source != "ubuntu":
        host.noop("NVIDIA's DKMS driver builds its module for each new kernel: kernel metapackages are left alone")
        return
    now = snapshot.current(host)
    metas = now.driver.kernel_meta
    if not metas:
        host.noop(f"no kernel metapackage of the running kernel {now.driver.kernel} is installed")
        return
    unheld = sorted(n for n, p in metas.items() if not p.held)
    commands = [*(gpu_files.file_commands(UNATTENDED_KERNEL_CONF, unattended_kernel_conf(sorted(metas)), 644,
                                     now.files.get(UNATTENDED_KERNEL_CONF))),
                *([StringCommand("apt-mark", "hold", *unheld)] if unheld else [])]
    if not commands:
        host.noop(f"kernel metapackages {', '.join(sorted(metas))} are held and kept from unattended-upgrades")
    yield from commands


def reboot_reason(state: DriverState, spec: DriverSpec) -> str | None:
    """Why the host must reboot to run the installed driver, or None (pure)."""
    installed = [p.version for n, p in state.drivers.items() if n in spec.packages]
    if not installed:
        return None
    want = installed[0].split(":")[-1].split("-")[0]
    if state.smi == "mismatch":
        return f"nvidia-smi reports a driver/library version mismatch (driver {want} installed, another one loaded)"
    loaded = state.module_version or (state.smi_driver if state.smi == "ok" else None)
    if loaded and loaded != want:
        return f"the loaded NVIDIA kernel module is {loaded} but {want} is installed"
    if not loaded and state.reboot_required:
        return f"driver {want} is installed, no NVIDIA kernel module is loaded and /var/run/reboot-required exists"
    return None


@operation()
def reboot_for_driver(branch: str, version: str, open_modules: bool = True, reboot: bool = True,
                      reboot_timeout: int = 600, source: str = "nvidia"):
    """
    Reboot when the loaded NVIDIA kernel module is not the installed driver (or none is loaded and the host asks
    for a reboot); with `reboot` False, fail with a message saying a reboot is needed instead.

    + branch / version / open_modules: the driver, as given to nvidia.driver
    + reboot: allowed to reboot the host
    + reboot_timeout: seconds to wait for the host to come back

    **Example:**

    .. code:: python

        nvidia.reboot_for_driver(name="Reboot into the new NVIDIA driver", branch="570", version="570.153.02")
    """
    spec = host_driver_spec(branch, version, open_modules, source)
    reason = reboot_reason(snapshot.current(host).driver, spec)
    if reason is None:
        host.noop("the running NVIDIA kernel module matches the installed driver (or none is needed yet)")
        return
    if not reboot:
        yield refuse(f"reboot needed: {reason}; reboot the host and run again (nvidia_driver_reboot is false)")
        return
    yield from server.reboot._inner(delay=10, interval=2, reboot_timeout=reboot_timeout)
    after = snapshot.fresh(host)
    why = reboot_reason(after.driver, spec)
    if why is not None:
        hint = ("Secure Boot is on and NVIDIA's DKMS modules are unsigned: set nvidia_driver_source: ubuntu"
                if after.preflight.secure_boot and source == "nvidia"
                else "check `dkms status` and `journalctl -k` for module build or load errors")
        yield refuse(f"rebooted, but {why}; {hint}")


# ---- NVSwitch hosts: the fabric manager; every GPU host: persistence mode -----------------------------------------


@operation()
def fabric_manager(branch: str, version: str):
    """
    On a host with NVSwitches on the PCI bus: the fabric manager of the driver release `version`, installed at
    exactly that version (the fabric manager refuses to run beside another driver version: Fabric Manager user guide,
    https://docs.nvidia.com/datacenter/tesla/fabric-manager-user-guide/index.html) and held with the driver (the
    driver's apt pin covers nvidia-*). Without NVSwitches nothing is needed.

    + branch / version: the driver, as given to nvidia.driver

    **Example:**

    .. code:: python

        nvidia.fabric_manager(name="Install the NVSwitch fabric manager", branch="570", version="570.172.08")
    """
    state = snapshot.current(host)
    if not state.preflight.nvswitches:
        host.noop("no NVSwitch on the PCI bus: no fabric manager needed")
        return
    wanted = datacenter.fabric_packages(branch)
    installed = state.driver.packages
    exact = [p for p in wanted if p in installed and installed[p].version.split(":")[-1].startswith(version + "-")]
    missing = [p for p in wanted if p not in exact]
    if missing:
        stanzas = host.get_fact(AptShow, packages=tuple(missing))
        args = []
        for name in missing:
            chosen, why = datacenter.choose_version(stanzas, name, version, branch, "apt (NVIDIA's CUDA repository "
                                                    "or Ubuntu's multiverse)")
            if chosen is None:
                yield refuse(f"fabric manager: {why}")
                return
            args.append(f"{name}={chosen}")
        other = [f"{p} {installed[p].version}" for p in missing if p in installed]
        if other:
            warn(host, f"fabric manager {', '.join(other)} does not match driver {version}: replacing it")
        yield StringCommand(packages.apt_get("install"), "--no-install-recommends", "--allow-downgrades",
                            "--allow-change-held-packages", *args)
        installed = snapshot.fresh(host).driver.packages
    unheld = [p for p in wanted if p in installed and not installed[p].held]
    if unheld:
        yield StringCommand("apt-mark", "hold", *unheld)
    elif not missing:
        host.noop(f"{', '.join(f'{p} {installed[p].version}' for p in wanted)} is installed and held")


def _service(name: str, what: str):
    """Commands that get unit `name` enabled and running, or a noop saying it already is (or is not installed)."""
    now = snapshot.current(host)
    unit = now.service(name)
    if not unit.installed:
        warn(host, f"{name}.service is not installed: {what} cannot be turned on")
        host.noop(f"{name} is not installed")
        return
    # a unit without an [Install] section (static, or pulled in by another: indirect) is not enabled by hand
    enable = unit.enabled not in ("static", "indirect", "generated")
    commands = services.service_commands(name, now.systemd, unit.active, unit.enabled, True, enable, False)
    if not commands:
        host.noop(f"{name} is {unit.active} and {unit.enabled}")
    yield from commands


@operation()
def fabric_service():
    """
    On an NVSwitch host whose NVIDIA module is loaded: the `nvidia-fabricmanager` service enabled and running (it
    configures the NVSwitch fabric; CUDA fails with error 802 "system not yet initialized" until it has).

    **Example:**

    .. code:: python

        nvidia.fabric_service(name="Enable and start the NVSwitch fabric manager")
    """
    state = snapshot.current(host)
    if not state.preflight.nvswitches:
        host.noop("no NVSwitch on the PCI bus: no fabric manager to run")
        return
    if state.driver.smi != "ok":  # after the module loads: the service fails without it
        host.noop(f"the NVIDIA module is not loaded (nvidia-smi: {state.driver.smi}): the fabric manager starts "
                  "after it")
        return
    yield from _service(datacenter.FABRIC_SERVICE, "the NVSwitch fabric")


# Persistence mode read back after a change: the daemon turns it on while starting (Type=forking: once it returns)
PERSISTENCE_CHECK = ("n=0; until out=$(nvidia-smi --query-gpu=index,persistence_mode --format=csv,noheader 2>&1) && "
                     "! printf '%s\\n' \"$out\" | grep -qv ', Enabled$'; do n=$((n + 1)); if [ $n -ge 10 ]; then "
                     "echo \"persistence mode is not Enabled on every GPU after starting nvidia-persistenced with "
                     f"{PERSISTENCED_DROPIN}: $out\" >&2; journalctl -u nvidia-persistenced -n 20 --no-pager >&2; "
                     "exit 1; fi; sleep 1; done")


@operation()
def persistenced(dropin: bytes):
    """
    Persistence mode on, on a host whose NVIDIA module is loaded: `nvidia-persistenced` enabled and running WITH
    persistence mode, so the driver stays initialised between GPU programs (NVIDIA's driver persistence guide,
    https://docs.nvidia.com/deploy/driver-persistence/). Ubuntu's packaged unit (NVIDIA's repository reuses it) is
    static and runs the daemon with --no-persistence-mode: `dropin` (files/nvidia-persistenced-gpu-llm.conf) overrides
    its ExecStart, adds an [Install] section and keeps it running; nvidia-smi's persistence_mode (read in the
    snapshot's --query-gpu) must then say Enabled on every GPU.

    + dropin: the systemd drop-in's bytes, written to gpu_llm.layout.PERSISTENCED_DROPIN

    **Example:**

    .. code:: python

        nvidia.persistenced(name="Enable persistence mode (nvidia-persistenced)", dropin=b"[Service]...")
    """
    now = snapshot.current(host)
    if now.driver.smi != "ok":
        host.noop(f"the NVIDIA module is not loaded (nvidia-smi: {now.driver.smi}): no persistence daemon yet")
        return
    name = datacenter.PERSISTENCED_SERVICE
    unit = now.service(name)
    if not unit.installed:
        warn(host, f"{name}.service is not installed: persistence mode cannot be turned on")
        host.noop(f"{name} is not installed")
        return
    if not now.systemd:
        yield refuse(f"{name} is configured through a systemd drop-in and systemd is not PID 1 on this host")
        return
    current = now.files.get(PERSISTENCED_DROPIN)
    written = gpu_files.file_commands(PERSISTENCED_DROPIN, dropin, 644, current)
    modes = now.gpus.persistence
    off = [str(i) for i, mode in enumerate(modes) if mode != "Enabled"]
    commands = [*written, *services.service_commands(
        name, True, unit.active, "disabled" if written else unit.enabled, running=True, is_enabled=True,
        # a changed drop-in takes effect on restart; a running daemon that left persistence mode off is restarted
        restarted=unit.active == "active" and (bool(written) or bool(off)), daemon_reload=bool(written))]
    if not commands:
        host.noop(f"{name} is {unit.active} and {unit.enabled}; persistence mode Enabled on {len(modes)} GPUs")
        return
    yield from commands
    yield StringCommand(PERSISTENCE_CHECK)


def fabric_wait_script(timeout: int, driver_version: str) -> str:
    """Shell polling nvidia-smi until every GPU's fabric state is Completed (or none has a state and the service is
    active); past `timeout` seconds, or when the service stops, it says so with the fabric manager's log tail."""
    service, log = datacenter.FABRIC_SERVICE, datacenter.FABRIC_LOG
    fail = (f"echo \"the NVSwitch fabric is not ready after $waited s: $states; {service} is $(systemctl is-active "
            f"{service}). The fabric manager must run at the driver's exact version (nvidia_driver_version="
            f"{driver_version}); raise nvidia_fabric_timeout if it only needs longer. Its log:\" >&2; "
            f"journalctl -u {service} -n 20 --no-pager >&2 2>/dev/null; tail -n 20 {log} >&2 2>/dev/null; exit 1")
    return (f"waited=0; while :; do "
            f"states=$(nvidia-smi --query-gpu=fabric.state,fabric.status --format=csv,noheader 2>&1 | tr '\\n' ';'); "
            f"active=$(systemctl is-active {service} 2>/dev/null); "
            f'if [ "$active" = active ] && ! printf "%s" "$states" | tr ";" "\\n" | grep -v "^$" '
            f"| grep -qv -e '^Completed, Success$' -e '^N/A, N/A$' -e '^\\[N/A\\], \\[N/A\\]$'; then exit 0; fi; "
            f'if [ "$active" = failed ] || [ "$waited" -ge {int(timeout)} ]; then {fail}; fi; '
            f"sleep 2; waited=$((waited + 2)); done")


@operation()
def fabric_ready(timeout: int, driver_version: str):
    """
    On an NVSwitch host: wait until nvidia-smi reports the fabric completed on every GPU (before vLLM starts);
    fail past `timeout` seconds with the fabric manager's state and log tail, naming the settings to change.

    + timeout: seconds to wait (nvidia_fabric_timeout)
    + driver_version: the pinned driver (the fabric manager must match it), for the failure message

    **Example:**

    .. code:: python

        nvidia.fabric_ready(name="Wait for the NVSwitch fabric", timeout=300, driver_version="570.172.08")
    """
    state = snapshot.current(host)
    if not state.preflight.nvswitches:
        host.noop("no NVSwitch on the PCI bus: no fabric to wait for")
        return
    unit = state.service(datacenter.FABRIC_SERVICE)
    if not unit.installed:  # waiting cannot help
        yield refuse(f"NVSwitches are on the PCI bus but the {datacenter.FABRIC_SERVICE} service is not installed "
                     "(a driver gpu-llm does not manage, or nvidia_driver_install: false): install "
                     f"nvidia-fabricmanager-<branch> at the running driver's exact version, or set "
                     "nvidia_driver_install: true so gpu-llm installs it; CUDA fails with error 802 until it runs")
        return
    verdict = datacenter.fabric_verdict(state.gpus.fabric, unit.active)
    if verdict.kind == "ready":
        host.noop(verdict.detail)
        return
    yield StringCommand(fabric_wait_script(timeout, driver_version))
