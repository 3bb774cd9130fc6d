"""Shell-out helpers shared by the testbed modules (check=True, captured output in the error)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


class TestbedError(RuntimeError):
    """A testbed step failed; the message carries the command's output."""

    __test__ = False  # not a pytest test class


def run(cmd: Sequence[str], *, check: bool = True, input: bytes | str | None = None,
        timeout: float | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, capture text output; raise TestbedError with stderr when it fails and `check`."""
    res = subprocess.run(list(cmd), input=input, capture_output=True, text=True, timeout=timeout, env=env)
    if check and res.returncode != 0:
        raise TestbedError(f"{' '.join(cmd)} -> rc {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


@contextmanager
def timed(what: str) -> Iterator[None]:
    """Print how long the block took, as `[time] what: 1.2s` (requirement: report timings)."""
    t0 = time.monotonic()
    yield
    print(f"[time] {what}: {time.monotonic() - t0:.1f}s", flush=True)
