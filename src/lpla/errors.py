"""User-facing errors.

An :class:`LplaError` is a mistake in the user's input (a missing file, a wrong shape, an unknown
name). The CLI prints its message as one line and exits non-zero, without a traceback. Anything
else escaping is a bug in lpla and keeps its traceback.
"""

from __future__ import annotations


class LplaError(Exception):
    """A problem with the user's input, with a message that names the problem and the fix."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")
