"""The vLLM image(s) on a host as the snapshot reads them: which Docker has, and the state of the pull unit."""

from __future__ import annotations

from dataclasses import dataclass

from gpu_llm.facts import JsonFact
from gpu_llm.facts.snapshot import HostState

RUNNING = ("active", "activating", "reloading", "deactivating")


@dataclass(frozen=True)
class ImageState(JsonFact):
    """`present`: the asked images Docker has (by repository:tag or repository@digest); `unit_state`: the pull
    unit's `systemctl is-active` (active, activating, inactive, failed; "" without systemd)."""

    present: tuple[str, ...] = ()
    unit_state: str = ""

    @property
    def running(self) -> bool:
        return self.unit_state in RUNNING

    def missing(self, images: list[str] | tuple[str, ...]) -> list[str]:
        return [i for i in images if i not in self.present]


def image_state(state: HostState, images: list[str] | tuple[str, ...], unit: str) -> ImageState:
    """What the snapshot says of `images` and pull unit `unit` (pure)."""
    have = set(state.images)
    return ImageState(tuple(i for i in images if i in have), state.service(unit).active)
