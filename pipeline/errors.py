"""The one error type users see, and the exit codes of the command line.

Anything raised as `EdgefoldError` is a problem with the user's input or environment
(bad file, unknown name, impossible budget, missing tool): the CLI prints its message
on one line and exits with `exit_code` (2). A failed gate is a result, not an error
(exit 1). Every other exception is a bug: the CLI prints its traceback and exits 3, so
CI can tell a bug from a gate. Ctrl-C exits 130 and SIGTERM 143, after cleaning up.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL_ERROR = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class EdgefoldError(Exception):
    """A user-facing failure: one clear line, non-zero exit."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, exit_code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C (context managers clean up), then exit 143."""
