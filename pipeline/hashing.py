"""Content hashes: the basis of export caching and of the manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(paths: Iterable[Path], root: Path | None = None) -> str:
    """One hash over several files: names (relative to root) and contents, sorted."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        label = str(path.relative_to(root)) if root else path.name
        digest.update(label.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """Hex sha256 of a JSON-serialisable value, independent of dict key order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()
