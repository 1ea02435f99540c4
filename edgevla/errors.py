"""The one exception type a user of edgevla sees.

Anything the user can get wrong (a target name, a recipe key, an output path,
an observation's shape) raises :class:`EdgevlaError` with a message that fits
on one line. The CLI prints ``edgevla: error: <message>`` and exits with
status 2; it never shows a traceback for these.
"""

from __future__ import annotations


class EdgevlaError(Exception):
    """A user-facing error: bad input, a failed gate, a missing capability."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep the message on one line: the CLI prints exactly this.
        super().__init__(" ".join(str(message).split()))


def describe(e: BaseException) -> str:
    """``Type: first line of the message``: an exception from a library or a kernel, said in one line."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


class GateFailed(EdgevlaError):
    """A build gate (numerical verification, accuracy) was not met."""

    exit_code = 3
