"""Thin pyinfra operations for GPU hosts: read the host snapshot, decide with a pure function, yield commands or noop.

Every operation of ours is declared with `operation()` below: the moment one starts changing a host (its first
command, while executing), the host's snapshot (gpu_llm.facts.snapshot) is dropped and the next reader reads it again.
That is the only place state is invalidated; an op that must see what its own commands did calls snapshot.fresh().
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

from pyinfra import context, logger
from pyinfra.api import FunctionCommand, QuoteString, State, StringCommand
from pyinfra.api import operation as pyinfra_operation
from pyinfra.api.host import Host

from gpu_llm import global_args, op_order
from gpu_llm.facts import snapshot

op_order.install()  # pyinfra's per-operation stack walk without reading source files (gpu_llm/op_order.py)
global_args.install()  # pyinfra's global-argument list computed once, not per operation (gpu_llm/global_args.py)


def operation(**op_kwargs: Any) -> Callable:
    """pyinfra's @operation(**op_kwargs), plus: the first command yielded while executing invalidates the snapshot."""

    def decorate(func: Callable[..., Iterator]) -> Callable:
        @functools.wraps(func)
        def commands(*args: Any, **kwargs: Any) -> Iterator:
            changing = False
            for command in func(*args, **kwargs):
                if not changing and context.state.is_executing:
                    snapshot.invalidate(context.host)
                    changing = True
                yield command

        return pyinfra_operation(**op_kwargs)(commands)

    return decorate


def state() -> snapshot.HostState:
    """The snapshot of the host being operated on."""
    return snapshot.current(context.host)


def _refuse(state: State, host: Host, message: str) -> bool:
    host.log_styled(f"refused: {message}", fg="red", log_func=logger.error)
    return False


def refuse(message: str) -> FunctionCommand:
    """A command that fails this host's operation with `message` (other hosts carry on), changing nothing.

    While pyinfra only plans (--dry, or before the confirmation prompt) the message is shown right away."""
    if not context.state.is_executing:
        context.host.log_styled(f"will refuse: {message}", fg="red", log_func=logger.warning)
    return FunctionCommand(_refuse, (message,), {})


def warn(host: Host, message: str) -> None:
    """Tell the user something that does not stop the deploy."""
    host.log_styled(f"warning: {message}", fg="yellow", log_func=logger.warning)


def download_naming_url(src: str, dest: str, setting: str, mode: str = "644"):  # noqa: ANN201 (op commands)
    """files.download's commands, the fetch failing with a message naming the URL and `setting`.

    curl -f alone only says "The requested URL returned error: 404", without the URL."""
    from pyinfra.operations import files

    message = f"cannot download {src} (unreachable or not there): check {setting} and this host's access to it"
    for command in files.download._inner(src=src, dest=dest, mode=mode):
        if isinstance(command, str | StringCommand) and src in str(command):
            yield StringCommand("(", command, ")", "||", "{", "echo", QuoteString(message), ">&2;", "exit", "1;", "}")
        else:
            yield command


@operation()
def shell(commands: list[str]):
    """
    Run `commands` (server.shell(commands=...) as one of our operations: the host snapshot is read again after).

    **Example:**

    .. code:: python

        shell(name="Rebuild the initramfs", commands=["update-initramfs -u"], _if=conf.did_change)
    """
    yield from (StringCommand(c) for c in commands)
