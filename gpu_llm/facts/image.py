"""Fact about the vLLM image(s) on a host: which of them Docker has, and the state of the background pull unit."""

from __future__ import annotations

from dataclasses import dataclass, field

from pyinfra.api import FactBase, QuoteString, StringCommand

from gpu_llm.facts import JsonFact

RUNNING = ("active", "activating", "reloading", "deactivating")


@dataclass(frozen=True)
class ImageState(JsonFact):
    """`ids`: image reference -> Docker's image id, for the asked images Docker has; `unit_state`: the pull unit's
    `systemctl is-active` (active, activating, inactive, failed; "" without systemd)."""

    ids: dict[str, str] = field(default_factory=dict)
    unit_state: str = ""

    @property
    def running(self) -> bool:
        return self.unit_state in RUNNING

    def missing(self, images: list[str] | tuple[str, ...]) -> list[str]:
        return [i for i in images if i not in self.ids]


def image_state_command(images: tuple[str, ...], unit: str) -> StringCommand:
    """One line per image Docker has (`present<TAB>image<TAB>id`), then `unit<TAB><is-active>`."""
    bits: list = []
    for image in images:
        bits += ["i=$(docker image inspect --format '{{.Id}}'", QuoteString(image), "2>/dev/null)", "&&",
                 "printf", QuoteString("present\\t%s\\t%s\\n"), QuoteString(image), '"$i"', ";"]
    bits += ["printf", QuoteString("unit\\t%s\\n"), '"$(systemctl', "is-active", QuoteString(unit), '2>/dev/null)";',
             "true"]
    return StringCommand(*bits)


def parse_image_state(lines: list[str]) -> ImageState:
    """ImagePull's output as an ImageState (pure: the host-state snapshot can parse the same lines)."""
    ids: dict[str, str] = {}
    unit_state = ""
    for line in lines:
        kind, _, rest = line.strip().partition("\t")
        if kind == "present":
            image, _, image_id = rest.partition("\t")
            if image and image_id:
                ids[image] = image_id
        elif kind == "unit":
            unit_state = rest.strip()
    return ImageState(ids, unit_state)


class ImagePull(FactBase[ImageState]):
    """
    Which of `images` Docker has (their ids) and the state of the pull unit `unit`.

    .. code:: python

        ImageState(ids={"vllm/vllm-openai:v0.11.0": "sha256:3f0c..."}, unit_state="inactive")
    """

    @staticmethod
    def default() -> ImageState:
        return ImageState()

    def command(self, images: tuple[str, ...], unit: str) -> StringCommand:
        return image_state_command(images, unit)

    def process(self, output: list[str]) -> ImageState:
        return parse_image_state(output)
