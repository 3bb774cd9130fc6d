"""NVIDIA's CUDA apt repository, the pinned driver (install / keep / refuse / replace) and the reboot it may need."""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import StringCommand
from pyinfra.operations import apt, server

from gpu_llm.facts import snapshot
from gpu_llm.facts.nvidia import DriverState
from gpu_llm.layout import CUDA_REPO_DIRS, STATE_DIR, cuda_source, keyring_deb
from gpu_llm.operations import download_naming_url, operation, packages, refuse, warn
from gpu_llm.operations import files as gpu_files

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


def driver_spec(distro: str, branch: str, version: str, open_modules: bool) -> DriverSpec:
    """Package names and version string in NVIDIA's CUDA repository.

    Ubuntu: nvidia-driver-<branch>[-open] at "<version>-0ubuntu1" (NVIDIA's ubuntu2204/ubuntu2404 repos, e.g.
    public install scripts pin `nvidia-driver-570-open=570.133.20-0ubuntu1` and its libnvidia-*-570 / nvidia-*-570
    siblings at the same version). Debian: nvidia-open (open modules) or cuda-drivers at "<version>-1"."""
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
    # any other driver metapackage is a different driver, except a flavour-neutral one at our version
    others = {n: p for n, p in drivers.items()
              if n not in ours and not (n in NEUTRAL_METAPACKAGES and spec.matches(p.version))}
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


def host_driver_spec(branch: str, version: str, open_modules: bool) -> DriverSpec:
    """driver_spec for the distro of the host being operated on."""
    return driver_spec(distro_id(snapshot.current(host).distro), branch, version, open_modules)


def host_driver_decision(branch: str, version: str, open_modules: bool, replace: bool,
                         required_cuda: str | None) -> DriverDecision:
    """decide_driver for the host being operated on, from its snapshot."""
    spec = host_driver_spec(branch, version, open_modules)
    return decide_driver(snapshot.current(host).driver, spec, replace, required_cuda)


def keeps_foreign_driver(branch: str, version: str, open_modules: bool, replace: bool,
                         required_cuda: str | None) -> bool:
    """At execution time: does the host run a driver gpu-llm leaves alone (not installed by apt)?

    For `_if=` of the steps that only make sense with our apt driver (pin, unattended-upgrades, nouveau)."""
    return host_driver_decision(branch, version, open_modules, replace, required_cuda).kind in (
        "foreign", "foreign-too-old")


def holds_missing(state: DriverState, spec: DriverSpec) -> list[str]:
    """Installed packages of our driver release that apt-mark has not held yet."""
    return sorted(n for n, p in state.packages.items() if spec.matches(p.version) and not p.held)


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
                 required_cuda: str | None = None):
    """
    Refuse now, before anything on the host changes, a driver that nvidia.driver would refuse later (a different
    apt driver without `replace`, a driver not from apt too old for `required_cuda`); arguments as nvidia.driver.

    **Example:**

    .. code:: python

        nvidia.driver_check(name="Check the host's NVIDIA driver", branch="570", version="570.153.02")
    """
    decision = host_driver_decision(branch, version, open_modules, replace, required_cuda)
    if decision.kind in ("conflict", "foreign-too-old"):
        yield refuse(decision.detail)
    else:
        host.noop(f"NVIDIA driver: {decision.detail}")


@operation()
def driver(branch: str, version: str, open_modules: bool = True, replace: bool = False,
           required_cuda: str | None = None):
    """
    Install the NVIDIA driver `version` from NVIDIA's repository and hold it; keep it if installed; refuse a
    different apt driver unless `replace`; leave a driver not installed by apt (runfile, cloud image) alone.

    + branch: driver branch, e.g. "570"
    + version: exact driver version, e.g. "570.153.02"
    + open_modules: the -open kernel modules (Turing and newer) instead of the proprietary ones
    + replace: purge a different apt-installed driver and install ours
    + required_cuda: CUDA release a driver not from apt must support ("12.8"), None to skip the check

    **Example:**

    .. code:: python

        nvidia.driver(name="Install NVIDIA driver 570.153.02", branch="570", version="570.153.02")
    """
    spec = host_driver_spec(branch, version, open_modules)
    state = snapshot.current(host).driver
    decision = decide_driver(state, spec, replace, required_cuda)
    if decision.kind in ("conflict", "foreign-too-old"):
        yield refuse(decision.detail)
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
        if state.headers == "missing":
            warn(host, f"linux-headers-{state.kernel} is not in apt: DKMS cannot build the driver for the running "
                       "kernel; boot a distro kernel")
        yield _install_command(state, spec, replacing=decision.kind == "replace")
        state = snapshot.fresh(host).driver  # read after the install ran (execution time)
    to_hold = holds_missing(state, spec)
    if to_hold:
        yield StringCommand("apt-mark", "hold", *to_hold)
    elif decision.kind == "ok":
        host.noop(decision.detail + " and held")


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
                      reboot_timeout: int = 600):
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
    spec = host_driver_spec(branch, version, open_modules)
    reason = reboot_reason(snapshot.current(host).driver, spec)
    if reason is None:
        host.noop("the running NVIDIA kernel module matches the installed driver (or none is needed yet)")
        return
    if not reboot:
        yield refuse(f"reboot needed: {reason}; reboot the host and run again (nvidia_driver_reboot is false)")
        return
    yield from server.reboot._inner(delay=10, interval=2, reboot_timeout=reboot_timeout)
    after = reboot_reason(snapshot.fresh(host).driver, spec)
    if after is not None:
        yield refuse(f"rebooted, but {after}; check `dkms status` and `journalctl -k` for module build errors")
