"""Operations for the vLLM image: a background `docker pull` as a transient systemd unit, and its join.

The image is the one the planner picks for the host's GPUs at execution time (gpu_llm.operations.vllm.host_plans,
as the containers use), so the pull starts once the driver and Docker are in, and overlaps the model download.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra import host, state
from pyinfra.api import FunctionCommand, QuoteString, StringCommand

from gpu_llm.facts import snapshot
from gpu_llm.facts.image import ImageState, image_state
from gpu_llm.operations import operation
from gpu_llm.operations.vllm import NotPlannable, host_plans
from gpu_llm.plan import ServeConfig

LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class Pull:
    """Where the host's pull runs and logs (paths on the host)."""

    unit: str  # transient systemd unit name, e.g. gpu-llm-image-pull.service
    log_file: str
    timeout_s: int  # RuntimeMaxSec of one attempt (a re-run starts another; layers already pulled are kept)


def planned_images(config: ServeConfig) -> list[str]:
    """The images of the instances the planner picks for the host's GPUs now; NotPlannable says why not."""
    return sorted({plan.image for plan in host_plans(config)})


def start_command(p: Pull, images: list[str]) -> StringCommand:
    """systemd-run a transient unit running `docker pull` for each image; returns at once, the unit keeps going.

    Its output goes to p.log_file (truncated per attempt); the journal keeps the unit's start and stop."""
    if len(images) == 1:
        argv = ["docker", "pull", images[0]]
    else:  # one unit, the images one after the other (instances of one host normally share their image)
        argv = ["/bin/sh", "-ec", 'for i in "$@"; do docker pull "$i"; done', "sh", *images]
    props = [f"RuntimeMaxSec={p.timeout_s}", f"StandardOutput=truncate:{p.log_file}", "StandardError=inherit"]
    log_dir = p.log_file.rsplit("/", 1)[0] or "/"
    bits: list = ["systemctl", "reset-failed", QuoteString(p.unit), "2>/dev/null", ";",
                  "mkdir", "-p", QuoteString(log_dir), "&&",
                  "systemd-run", "--quiet", "--collect", QuoteString(f"--unit={p.unit}"),
                  QuoteString(f"--description=gpu-llm: docker pull {' '.join(images)}")]
    bits += [QuoteString(f"--property={prop}") for prop in props]
    bits += ["--", *(QuoteString(a) for a in argv)]
    return StringCommand(*bits)


def join_command(p: Pull, images: list[str], restart: StringCommand | None = None) -> StringCommand:
    """Wait while the unit runs, then require every image; with `restart`, a pull that ended without them (one
    still running from an earlier run, for other settings, or one the registry cut) is started once more first.
    Fails with the tail of the pull log, naming the images."""
    wait = StringCommand("while", "systemctl", "is-active", "--quiet", QuoteString(p.unit), ";", "do", "sleep", "1",
                         ";", "done")
    have = StringCommand(*[bit for image in images for bit in
                           ("docker", "image", "inspect", QuoteString(image), ">/dev/null", "2>&1", "&&")], "true")
    message = (f"docker pull of {' '.join(images)} failed (unit {p.unit}); the last lines of {p.log_file}:")
    fail = StringCommand("{", "echo", QuoteString(message), ">&2", ";", "tail", "-n", str(LOG_TAIL_LINES),
                         QuoteString(p.log_file), ">&2", ";", "exit", "1", ";", "}")
    if restart is None:
        return StringCommand(wait, ";", have, "||", fail)
    return StringCommand(wait, ";", have, "||", "{", restart, "&&", wait, ";", have, ";", "}", "||", fail)


def _report(state, host, images: list[str], unit: str) -> bool:  # noqa: ANN001 (pyinfra passes its State and Host)
    pulled: ImageState = image_state(snapshot.fresh(host), images, unit)
    host.log(", ".join(f"image {i} pulled" for i in pulled.present))
    return True


def _images_or_none(config: ServeConfig) -> list[str] | None:
    """The planned images; None (said on the host's log) when the GPUs cannot be read or planned for yet."""
    try:
        return planned_images(config)
    except NotPlannable as exc:
        if state.is_executing:  # predicting on a fresh host: the driver is only installed later in the run
            host.noop(f"no image to pull ({exc}); the vLLM step says why")
        return None


def _pull_state(config: ServeConfig, p: Pull) -> tuple[ImageState, list[str]] | StringCommand | None:
    """(state, missing images) of the planned images; None when nothing is missing or the GPUs cannot be planned
    for yet (each said on the host's log); while predicting on a fresh host (no driver yet), a no-op command saying
    the step will act once the GPUs are readable."""
    images = _images_or_none(config)
    if images is None:
        return None if state.is_executing else StringCommand(
            ":", QuoteString("the image is planned from the GPUs once the driver is in"))
    current = image_state(snapshot.current(host), images, p.unit)
    missing = current.missing(images)
    if not missing:
        host.noop(", ".join(f"image {i} present" for i in images))
        return None
    return current, missing


@operation()
def pull_started(config: ServeConfig, p: Pull):  # noqa: ANN201 (op commands)
    """Start pulling the planned image(s) in the background unless Docker has them or the pull unit already runs."""
    found = _pull_state(config, p)
    if not isinstance(found, tuple):
        yield from [found] if found is not None else []
        return
    current, missing = found
    if current.running:
        host.noop(f"pull of {' '.join(missing)} already running ({p.unit}, log {p.log_file})")
    else:
        yield start_command(p, missing)


@operation()
def pull_joined(config: ServeConfig, p: Pull):  # noqa: ANN201
    """Wait for the pull unit and require the planned image(s); a pull a reboot (or failure) stopped is started
    again. Fails naming the images, with the tail of the pull log, when Docker still lacks one."""
    found = _pull_state(config, p)
    if not isinstance(found, tuple):
        yield from [found] if found is not None else []
        return
    current, missing = found
    if current.running:
        yield join_command(p, missing, restart=start_command(p, missing))
    else:
        host.log(f"pull of {' '.join(missing)} not running (stopped by a reboot, or failed): starting it again")
        yield start_command(p, missing)
        yield join_command(p, missing)
    yield FunctionCommand(_report, (missing, p.unit), {})
