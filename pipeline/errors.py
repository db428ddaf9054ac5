"""The one error type users see.

Anything raised as `EdgefoldError` is a problem with the user's input or environment
(bad file, unknown name, impossible budget, missing tool): the CLI prints its message
on one line and exits with `exit_code`. Every other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations


class EdgefoldError(Exception):
    """A user-facing failure: one clear line, non-zero exit."""

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
