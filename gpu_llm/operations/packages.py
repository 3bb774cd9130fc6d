"""apt packages and sources like pyinfra's apt.packages / apt.repo, but the installed packages and the sources are
read once per host and run (pyinfra reads them again in every operation); our ops that change them forget them."""

from __future__ import annotations

from collections.abc import Iterator

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.apt import AptSources, noninteractive_apt, parse_apt_repo
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import files
from pyinfra.operations.util.packaging import ensure_packages

from gpu_llm.facts import memo

# Seconds apt waits for dpkg's lock (unattended-upgrades on a fresh cloud host, an apt cut off by a dropped session)
# before failing; apt's own default is to fail at once.
APT_LOCK_TIMEOUT_S = 600


def apt_get(command: str) -> str:
    """pyinfra's noninteractive apt-get `command` (confdef/confold), waiting for dpkg's lock instead of failing."""
    return noninteractive_apt(command).replace("apt-get -y", f"apt-get -y -o DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S}", 1)


@operation()
def packages(packages: list[str]):
    """
    Install apt `packages` that are missing (apt.packages(packages=...) with its defaults).

    + packages: package names, "name=version" for an exact version

    **Example:**

    .. code:: python

        packages.packages(name="Install python3-venv", packages=["python3-venv"])
    """
    commands = list(ensure_packages(host, packages, memo.fact(host, DebPackages), True,
                                    install_command=apt_get("install"),
                                    uninstall_command=apt_get("remove"),
                                    upgrade_command=apt_get("install"), version_join="="))
    if commands:
        forget_apt_state()
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
    wanted = parse_apt_repo(src)
    if wanted and wanted in memo.fact(host, AptSources):
        host.noop(f'apt repo "{src}" exists')
        return
    memo.forget(host, AptSources)
    yield from files.line._inner(path=f"/etc/apt/sources.list.d/{filename}.list", line=src,
                                 escape_regex_characters=True)


def forget_apt_state() -> None:
    """An apt or dpkg command of ours is about to run: installed packages and sources may change."""
    memo.forget(host, DebPackages)
    memo.forget(host, AptSources)


def forgetting_apt_state(commands: Iterator) -> Iterator:
    """Pass on the commands of a pyinfra apt operation, forgetting what they may change before the first runs."""
    for command in commands:
        forget_apt_state()
        yield command
