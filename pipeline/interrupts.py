"""Ctrl-C and SIGTERM: unwind at a safe point, clean up, exit 130/143.

Python's signal handler runs between bytecodes, which may be inside a Python callback
that native code called (MetaSchedule's builder and runner, TVM's FFI). An exception
raised there crosses C++ frames that cannot carry it and the process aborts. So around
such calls (`native_calls()`), a signal is only recorded, and raised when the native
call returns; everywhere else it is raised at once.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator

from edgefold.errors import Terminated

_depth = 0
_pending: list[int] = []


def defer_now() -> bool:
    """True while inside `native_calls()`: the handler should only record the signal."""
    return _depth > 0


def record(signum: int) -> None:
    """Remember a signal that arrived during native calls, to be raised once they return."""
    _pending.append(signum)


def exception_for(signum: int) -> BaseException:
    """The exception a signal should raise: Terminated for SIGTERM, KeyboardInterrupt otherwise."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def native_calls() -> Iterator[None]:
    """Defer signals until the enclosed native work returns, then raise them."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending:
            signum = _pending[0]
            _pending.clear()
            raise exception_for(signum)


def check() -> None:
    """Raise a signal recorded while deferring (call between native calls, from plain Python)."""
    if _pending:
        signum = _pending[0]
        _pending.clear()
        raise exception_for(signum)


def reset() -> None:
    """Forget any deferred signals and leave native-call mode (start of a fresh CLI run)."""
    global _depth
    _depth = 0
    _pending.clear()
