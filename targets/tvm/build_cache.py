"""Reuse a shape's finished build when nothing that decides it has changed.

A bucket's library, weights and records depend on: the model files, the shape, the
profile and target, the trial budget, the tuning database's records, the tool versions
and edgefold's own compile code. The key is a hash of all of them, with the database
as tuning left it; the next compile of the same inputs finds the key (its database
looks the same, since nothing is left to tune) and copies the result without
importing, tuning or building anything. Entries are written atomically; an incomplete
one is ignored.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any

from edgefold.atomic import atomic_directory, cache_root
from edgefold.hashing import sha256_file, sha256_files, sha256_json

ENTRY_FILE = "entry.json"


@functools.lru_cache(maxsize=8)
def _model_hash(paths: tuple[Path, ...], stamp: tuple) -> str:
    return sha256_files(list(paths))


def model_hash(model_files: list[Path]) -> str:
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in model_files)
    return _model_hash(tuple(model_files), stamp)


def code_hash() -> str:
    folder = Path(__file__).parent
    return sha256_files(sorted(folder.glob("*.py")) + sorted((folder / "runner").glob("*.cc")))


def file_digest(path: Path) -> str:
    return sha256_file(path) if path.exists() else "empty"


def build_key(*, model: str, bucket: dict, profile: dict, target: str, budget: int, records: Path,
              versions: dict) -> str:
    database = file_digest(records)
    return sha256_json({"model": model, "bucket": bucket, "profile": profile, "target": target, "budget": budget,
                        "database": database, "versions": versions, "code": code_hash()})


def _folder(key: str) -> Path:
    return cache_root() / "compiled" / key[:24]


def load(key: str) -> tuple[dict[str, Any], Path] | None:
    """(entry, folder with its files) of a finished build, or None."""
    folder = _folder(key)
    try:
        entry = json.loads((folder / ENTRY_FILE).read_text())
    except (OSError, ValueError):
        return None
    files = entry.get("_files", [])
    if not all((folder / name).exists() for name in files):
        return None
    return entry, folder


def store(key: str, entry: dict[str, Any], files: dict[str, Path]) -> None:
    """Keep `files` (artifact-relative name -> path) and `entry` under `key`."""
    with atomic_directory(_folder(key)) as staging:
        for name, path in files.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, target)
            else:
                _link_or_copy(path, target)
        (staging / ENTRY_FILE).write_text(json.dumps({**entry, "_files": sorted(files)}, sort_keys=True))


def restore(folder: Path, entry: dict[str, Any], staging: Path) -> None:
    for name in entry["_files"]:
        source, target = folder / name, staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        elif not target.exists():  # a weight file shared with an earlier shape is already there
            shutil.copyfile(source, target)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where possible: the cache then costs no second copy of the weights."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
