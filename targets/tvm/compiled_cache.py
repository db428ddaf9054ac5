"""Reuse a shape's finished build when nothing that decides it has changed.

A bucket's library, weights and records depend on: the model files, the shape, the
profile and target, the trial budget, the tuning database's records, the tool versions
and edgefold's own compile code. The key is a hash of all of them, with the database
as tuning left it; the next compile of the same inputs finds the key (its database
looks the same, since nothing is left to tune) and copies the result without
importing, tuning or building anything. Entries are written atomically; an incomplete
one is ignored. Files are copied in and out (never hard-linked: editing an artifact in
place must not change the cache), and their sha256 is checked on every use: an entry
whose files changed is ignored and rebuilt.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

from edgefold.atomic import cache_directory, cache_root
from edgefold.hashing import sha256_file, sha256_files, sha256_json

ENTRY_FILE = "entry.json"


@functools.lru_cache(maxsize=8)
def _model_hash(paths: tuple[Path, ...], stamp: tuple) -> str:
    return sha256_files(list(paths))


def model_hash(model_files: list[Path]) -> str:
    """Content hash of the model files (recomputed only when a file's size or mtime changes)."""
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in model_files)
    return _model_hash(tuple(model_files), stamp)


def code_hash(folder: Path | None = None) -> str:
    """Every source file of the compile stage, subpackages included (the LLM kernels live in
    kernels/ and llm/: a changed kernel must never be served from an older build)."""
    folder = Path(__file__).parent if folder is None else folder
    files = sorted(p for p in folder.rglob("*") if p.suffix in {".py", ".cc", ".sh"} and "__pycache__" not in p.parts)
    return sha256_files(files, root=folder)


def file_digest(path: Path) -> str:
    """sha256 of a file, or "empty" when it does not exist."""
    return sha256_file(path) if path.exists() else "empty"


def build_key(*, model: str, bucket: dict, profile: dict, target: str, budget: int, records: Path,
              versions: dict) -> str:
    """The cache key of a bucket's build: a hash of everything that decides its output."""
    database = file_digest(records)
    return sha256_json({"model": model, "bucket": bucket, "profile": profile, "target": target, "budget": budget,
                        "database": database, "versions": versions, "code": code_hash()})


def _folder(key: str) -> Path:
    return cache_root() / "compiled" / key[:24]


def load(key: str) -> tuple[dict[str, Any], Path] | None:
    """(entry, folder with its files) of a finished build whose files are intact, or None."""
    folder = _folder(key)
    try:
        entry = json.loads((folder / ENTRY_FILE).read_text())
    except (OSError, ValueError):
        return None
    hashes = entry.get("_hashes")
    if not isinstance(hashes, dict) or not hashes or _hashes(folder, entry.get("_files", [])) != hashes:
        return None  # missing, modified or from an older format: build again
    return entry, folder


def _hashes(folder: Path, names: list[str]) -> dict[str, str] | None:
    """sha256 of every file under the entry's names, by relative path; None if one is missing."""
    found: dict[str, str] = {}
    for name in names:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                found[file.relative_to(folder).as_posix()] = sha256_file(file)
        elif path.is_file() and not path.is_symlink():
            found[name] = sha256_file(path)
        else:
            return None
    return found


def store(key: str, entry: dict[str, Any], files: dict[str, Path]) -> None:
    """Keep copies of `files` (artifact-relative name -> path) and `entry` under `key`."""
    with cache_directory(_folder(key)) as staging:
        for name, path in files.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, target)
            else:
                shutil.copyfile(path, target)
        hashes = _hashes(staging, sorted(files))
        (staging / ENTRY_FILE).write_text(json.dumps({**entry, "_files": sorted(files), "_hashes": hashes},
                                                     sort_keys=True))


def restore(folder: Path, entry: dict[str, Any], staging: Path) -> None:
    """Copy a cached build's files from `folder` into the artifact's `staging` folder."""
    for name in entry["_files"]:
        source, target = folder / name, staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        elif not target.exists():  # a weight file shared with an earlier shape is already there
            shutil.copyfile(source, target)
