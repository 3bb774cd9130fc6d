"""apt packages, sources and list refreshes like pyinfra's apt.packages / apt.repo / apt.update, but the installed
packages and our source files come from the host snapshot (pyinfra reads `dpkg -l` and every source file again in
each operation)."""

from __future__ import annotations

from urllib.parse import unquote

from pyinfra import host
from pyinfra.api import StringCommand
from pyinfra.facts.apt import noninteractive_apt
from pyinfra.operations import files
from pyinfra.operations.util.packaging import ensure_packages

from gpu_llm.facts import snapshot
from gpu_llm.operations import operation

# Seconds apt waits for dpkg's lock (unattended-upgrades on a fresh cloud host, an apt cut off by a dropped session)
# before failing; apt's own default is to fail at once.
APT_LOCK_TIMEOUT_S = 600
SOURCES_DIR = "/etc/apt/sources.list.d"


def apt_get(command: str) -> str:
    """pyinfra's noninteractive apt-get `command` (confdef/confold), waiting for dpkg's lock instead of failing."""
    return noninteractive_apt(command).replace("apt-get -y", f"apt-get -y -o DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S}", 1)


def source_file(filename: str) -> str:
    """Where packages.repo writes source `filename` (the snapshot reads these files: gpu_llm.layout)."""
    return f"{SOURCES_DIR}/{filename}.list"


def lists_stem(line: str) -> str | None:
    """The name apt gives the lists of a one-line source (`deb [options] URI SUITE [COMPONENTS]`), before its
    `_InRelease` / `_Release` / `_<component>_...`: the URI without scheme and login, then `dists/SUITE` (a flat
    repository's SUITE ends with /, and adds itself), slashes as underscores. apt also %-quotes some characters
    ("x86_64" -> "x86%5f64", as the testbed's real apt names its lists: tests/ops/test_operations.py); compare it
    with `unquote`d names. None for what is not a `deb` line."""
    words = line.split()
    if not words or words[0] != "deb":
        return None
    words = words[1:]
    if words and words[0].startswith("["):  # options, which may hold spaces: up to the word that closes them
        end = next((i for i, w in enumerate(words) if w.endswith("]")), len(words) - 1)
        words = words[end + 1:]
    if len(words) < 2:
        return None
    uri, suite = words[0].rstrip("/"), words[1]
    path = uri.split("://", 1)[-1].rsplit("@", 1)[-1]
    path += ("/" + suite.strip("/") if suite.strip("/") else "") if suite.endswith("/") else f"/dists/{suite}"
    return path.replace("/", "_")


def lists_missing() -> list[str]:
    """Lines of gpu-llm's apt sources on the host (the snapshot's probe) whose lists apt does not have: a run cut off
    between adding a repository and refreshing apt leaves one, and the next run must still refresh."""
    state = snapshot.current(host)
    names = [unquote(name) for name in state.apt_lists]
    return [line for lines in state.sources.values() for line in lines
            if (stem := lists_stem(line)) and not any(name.startswith(stem + "_") for name in names)]


@operation()
def packages(packages: list[str], update: bool = False):
    """
    Install apt `packages` that are missing (apt.packages(packages=...) with its defaults).

    + packages: package names, "name=version" for an exact version; each name must be in the snapshot's probe
    + update: refresh apt's lists first, only when something is to be installed (apt.packages(update=True) would
      refresh on every run)

    **Example:**

    .. code:: python

        packages.packages(name="Install python3-venv", packages=["python3-venv"])
    """
    commands = list(ensure_packages(host, packages, snapshot.current(host).packages, True,
                                    install_command=apt_get("install"),
                                    uninstall_command=apt_get("remove"),
                                    upgrade_command=apt_get("install"), version_join="="))
    if commands and update:
        yield StringCommand(apt_get("update"))
    yield from commands


@operation()
def repo(src: str, filename: str):
    """
    The apt source line `src` in /etc/apt/sources.list.d/<filename>.list (apt.repo(src=..., filename=...)).

    + src: a one-line source, "deb [signed-by=...] URL SUITE [COMPONENTS]"
    + filename: the .list file's name without .list

    **Example:**

    .. code:: python

        packages.repo(name="Add a repository", src="deb [signed-by=/k.asc] https://example.org/deb /", filename="x")
    """
    path = source_file(filename)
    if src.strip() in snapshot.current(host).sources.get(path, []):
        host.noop(f'apt repo "{src}" exists in {path}')
        return
    yield from files.line._inner(path=path, line=src, escape_regex_characters=True)


@operation()
def update():
    """
    Refresh apt's package lists (apt-get update), waiting for dpkg's lock like our installs.

    **Example:**

    .. code:: python

        packages.update(name="Refresh apt lists", _if=repo.did_change)
    """
    yield StringCommand(apt_get("update"))
