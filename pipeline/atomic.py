"""Write an output folder all-or-nothing: build beside it, rename into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary folder next to `final`; on success it replaces `final`.

    On any exception the temporary folder is removed and `final` is untouched, so a
    failed build never leaves a half-written artifact behind.
    """
    final = Path(final).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def cache_root() -> Path:
    """Where exports and other reusable work are cached (EDGEFOLD_CACHE overrides)."""
    root = os.environ.get("EDGEFOLD_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "edgefold"
