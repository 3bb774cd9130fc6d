"""Thin pyinfra operations for GPU hosts: read a fact, decide with a pure function, yield commands or noop."""

from __future__ import annotations

from pyinfra import context, logger
from pyinfra.api import FunctionCommand, QuoteString, State, StringCommand
from pyinfra.api.host import Host


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
