"""Progress reporting through one helper so every stage looks the same.

On a terminal we draw rich spinners/bars; when stdout is not a TTY (CI logs, pipes)
we print one plain line per step so logs stay readable and greppable.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterable, Iterator, TypeVar

from rich.console import Console

T = TypeVar("T")

console = Console(stderr=True, highlight=False)
if not console.is_terminal:  # logs: long lines instead of wrapping at 80 columns
    console = Console(stderr=True, highlight=False, width=200)


def _interactive() -> bool:
    return console.is_terminal and sys.stderr.isatty()


def info(message: str) -> None:
    """A one-line status message (stderr, so stdout stays machine-readable)."""
    console.print(message, markup=False)


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Announce a stage, show a spinner while it runs, and report its duration."""
    start = time.perf_counter()
    if _interactive():
        with console.status(title):
            yield
    else:
        info(f"... {title}")
        yield
    info(f"done {title} ({time.perf_counter() - start:.1f}s)")


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on a terminal, or periodic lines in logs."""
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    total = total if total is not None else len(items)  # type: ignore[arg-type]
    if _interactive():
        from rich.progress import track as rich_track

        yield from rich_track(items, description=description, total=total, console=console)
        return
    every = max(1, total // 4)
    for index, item in enumerate(items):
        if index % every == 0:
            info(f"    {description} {index}/{total}")
        yield item
