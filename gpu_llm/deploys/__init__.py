"""One pyinfra @deploy per concern; deploys read settings, operations take explicit arguments."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "files"
TEMPLATES = ROOT / "templates"


def managed_paths(s) -> tuple[str, ...]:  # noqa: ANN001 (gpu_llm.settings.Settings)
    """Every small file and directory the deploys manage: the first gpu_llm.operations.files op of a run reads the
    state of all of them in one command, the others reuse it until one of them changes something."""
    from gpu_llm.deploys import docker, model, nvidia, vllm  # they import this module

    return (*model.paths(s), *nvidia.paths(s), *docker.paths(), *vllm.paths(s))


def service(**kwargs):  # noqa: ANN003, ANN201 (the arguments and result of systemd.service)
    """systemd.service where systemd is the init (PID 1); the init script elsewhere (containers, chroots).

    pyinfra's systemd facts fail outright on a host whose systemctl exists but whose PID 1 is not systemd
    (e.g. a container image), which would abort even a --dry plan.
    """
    from pyinfra import host
    from pyinfra.facts.files import Directory
    from pyinfra.operations import systemd, sysvinit

    from gpu_llm.facts import memo

    if memo.fact(host, Directory, path="/run/systemd/system"):  # sd_booted(3): how systemd itself tells
        return systemd.service(**kwargs)
    kwargs.pop("daemon_reload", None)
    return sysvinit.service(**kwargs)
