"""Output folders written all-or-nothing, and never over anything edgefold did not write.

Every folder edgefold writes is built in a hidden staging sibling and moved into place
when complete, so a failure or an interrupt leaves nothing half-written.

A user-visible output (`-o DIR`, a recipe's `output`) is only created or replaced when it
is absent, an empty folder, or a folder edgefold itself wrote (recognised by its
`manifest.json`). Then only edgefold's own entries are replaced; a folder that also holds
other files is refused unless `force` is set, and even then those files stay where they
are. A symbolic link, a file, the filesystem root, the home folder, the working folder or
any folder above it is always refused.

Staging and scratch folders carry the creating process id in their names and a marker
file inside; `clean_stale` removes the ones whose process is gone (a SIGKILL leaves
them behind) and never touches anything without the marker.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from edgefold.errors import EdgefoldError

MANIFEST_FILE = "manifest.json"
WRITTEN_BY = "edgefold"
# Marks a folder as edgefold's scratch: only marked folders are ever cleaned up.
STAGING_MARKER = ".edgefold-staging"
# Entries edgefold writes besides the files its manifest lists (reports are not hashed).
KNOWN_ENTRIES = frozenset({MANIFEST_FILE, "report.json", "report.html", "junit.xml", "compile-report.json",
                           "search.json", "search.html", "search", "best"})
_TEMP_NAME = re.compile(r"\.tmp-(\d+)-|\.old-(\d+)-|^(?:build|compile|calibrate|profile|run)-(\d+)-")

# Folders this process is writing right now: removed on a hard exit after a second Ctrl-C.
_ACTIVE: set[Path] = set()


# ---------------------------------------------------------------- what may be replaced


@dataclass
class OutputClaim:
    """What is at an output path now, and which of its entries edgefold may replace."""

    path: Path
    state: str  # "absent", "empty" or "edgefold"
    own: set[str] = field(default_factory=set)  # top-level entries edgefold wrote
    foreign: list[str] = field(default_factory=list)  # other entries (kept, never removed)


def is_edgefold_manifest(data: object) -> bool:
    """True for manifests edgefold writes (current ones say so; older ones carry its version)."""
    if not isinstance(data, dict):
        return False
    if data.get("written_by") == WRITTEN_BY:
        return True
    versions = data.get("versions")
    return "edgefold_version" in data or (isinstance(versions, dict) and "edgefold" in versions)


def read_own_manifest(folder: Path) -> dict | None:
    """The folder's manifest if edgefold wrote it, else None."""
    path = folder / MANIFEST_FILE
    try:
        if path.is_symlink() or not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if is_edgefold_manifest(data) else None


def own_entries(manifest: dict) -> set[str]:
    """Top-level names a manifest says edgefold wrote."""
    names = set(KNOWN_ENTRIES)
    for relative in (manifest.get("files") or {}):
        first = Path(str(relative)).parts[0] if str(relative) else ""
        if first and first not in (".", ".."):
            names.add(first)
    for relative in (manifest.get("carried_files") or manifest.get("compile", {}).get("carried_files") or []):
        names.add(Path(str(relative)).parts[0])
    return names


def _protected(path: Path) -> str | None:
    """Why `path` may never be an output folder, or None."""
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        return "it is the filesystem root"
    home = Path.home().resolve()
    if resolved == home or resolved in home.parents:
        return "it is your home folder" if resolved == home else "it contains your home folder"
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        return "it is the working folder" if resolved == cwd else "it contains the working folder"
    return None


def claim_output(path: Path, *, force: bool = False) -> OutputClaim:
    """Check that edgefold may write `path`; raises a one-line EdgefoldError if not."""
    path = Path(os.path.abspath(path))
    if path.is_symlink():
        raise EdgefoldError(f"refusing to write to {path}: it is a symbolic link (give the real folder)")
    reason = _protected(path)
    if reason:
        raise EdgefoldError(f"refusing to write to {path}: {reason}; give a new or empty folder")
    if not path.exists():
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                raise EdgefoldError(f"cannot write to {path}: {parent} is a file, not a folder")
        return OutputClaim(path, "absent")
    if not path.is_dir():
        raise EdgefoldError(f"refusing to write to {path}: it is a file, not a folder")
    try:
        entries = sorted(p.name for p in path.iterdir())
    except OSError as exc:
        raise EdgefoldError(f"cannot read {path}: {exc.strerror}") from None
    if not entries:
        return OutputClaim(path, "empty")
    manifest = read_own_manifest(path)
    if manifest is None:
        raise EdgefoldError(f"refusing to write to {path}: the folder is not empty and edgefold did not write it "
                            f"(no edgefold {MANIFEST_FILE}); give a new or empty folder")
    own = own_entries(manifest)
    foreign = [name for name in entries if name not in own]
    if foreign and not force:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise EdgefoldError(f"refusing to replace {path}: besides edgefold's files it holds {shown}; move them, "
                            f"or pass --force to replace only edgefold's files (yours are kept)")
    return OutputClaim(path, "edgefold", own=own, foreign=foreign)


# ---------------------------------------------------------------- staging and commit


def _make_staging(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name[:100]}.tmp-{os.getpid()}-", dir=final.parent))
    (staging / STAGING_MARKER).touch()
    _ACTIVE.add(staging)
    return staging


def _discard(path: Path) -> None:
    _ACTIVE.discard(path)
    shutil.rmtree(path, ignore_errors=True)


def _commit(staging: Path, claim: OutputClaim) -> None:
    """Move the finished staging folder into place, replacing only edgefold's entries."""
    (staging / STAGING_MARKER).unlink(missing_ok=True)
    final = claim.path
    if claim.state == "empty":
        with contextlib.suppress(OSError):
            final.rmdir()  # fails if something appeared meanwhile: the rename below then refuses
    if claim.state in ("absent", "empty"):
        try:
            os.rename(staging, final)
        except OSError:
            raise EdgefoldError(f"refusing to write to {final}: it appeared while edgefold was writing it") from None
        _ACTIVE.discard(staging)
        return
    foreign_now = [p.name for p in final.iterdir() if p.name not in claim.own]
    if not foreign_now:  # only edgefold's files: swap the whole folder
        aside = Path(tempfile.mkdtemp(prefix=f".{final.name[:100]}.old-{os.getpid()}-", dir=final.parent))
        (aside / STAGING_MARKER).touch()
        os.replace(final, aside / "old")
        os.rename(staging, final)
        _ACTIVE.discard(staging)
        shutil.rmtree(aside, ignore_errors=True)
        return
    # Other files live here too (allowed with force): replace edgefold's entries one by one.
    for name in sorted(claim.own):
        old = final / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
    for entry in sorted(staging.iterdir()):
        if entry.name in foreign_now:  # never overwrite a file edgefold did not write
            raise EdgefoldError(f"refusing to replace {final / entry.name}: edgefold did not write it")
        os.rename(entry, final / entry.name)
    _discard(staging)


@contextlib.contextmanager
def output_directory(final: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a staging folder for a user-visible output; on success it takes `final`'s place.

    The claim is checked before any work and again at the end; on any exception the staging
    folder is removed and `final` is untouched.
    """
    final = Path(os.path.abspath(final))
    claim_output(final, force=force)
    clean_stale(final.parent, final.name)
    staging = _make_staging(final)
    try:
        yield staging
        claim = claim_output(final, force=force)  # the folder may have changed meanwhile
        _commit(staging, claim)
    except BaseException:
        _discard(staging)
        raise


@contextlib.contextmanager
def cache_directory(final: Path) -> Iterator[Path]:
    """Like `output_directory` for a cache entry (a folder named by a content hash under the
    cache root): an existing entry is replaced whole."""
    final = Path(os.path.abspath(final))
    root = cache_root().absolute()
    if root not in final.parents:
        raise AssertionError(f"{final} is not inside the cache {root}")
    clean_stale(final.parent, final.name)
    staging = _make_staging(final)
    try:
        yield staging
        (staging / STAGING_MARKER).unlink(missing_ok=True)
        if final.exists() or final.is_symlink():
            aside = Path(tempfile.mkdtemp(prefix=f".{final.name[:100]}.old-{os.getpid()}-", dir=final.parent))
            (aside / STAGING_MARKER).touch()
            os.replace(final, aside / "old")
            os.rename(staging, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(staging, final)
        _ACTIVE.discard(staging)
    except BaseException:
        _discard(staging)
        raise


@contextlib.contextmanager
def scratch_directory(prefix: str) -> Iterator[Path]:
    """A marked scratch folder under the cache's `work/`, removed afterwards (even on Ctrl-C)."""
    root = cache_root() / "work"
    root.mkdir(parents=True, exist_ok=True)
    clean_stale(root)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-", dir=root))
    (folder / STAGING_MARKER).touch()
    _ACTIVE.add(folder)
    try:
        yield folder
    finally:
        _discard(folder)


# ---------------------------------------------------------------- leftovers of killed runs


def _process_started(pid: int) -> float | None:
    """Start time of a running process, or None if there is none."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # no such process, or no permission to look: treat as gone only if absent
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0.0
        return 0.0


def _is_stale(path: Path, pid: int) -> bool:
    if pid == os.getpid():
        return False
    started = _process_started(pid)
    if started is None:
        return True
    # The id was reused by a process that started after the folder was made.
    return started > path.lstat().st_mtime + 1.0


def clean_stale(parent: Path, name: str | None = None) -> list[Path]:
    """Remove marked staging/scratch folders in `parent` whose process has ended.

    `name` limits it to the staging folders of one output. Returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if name is not None and not entry.name.startswith(f".{name[:100]}."):
            continue
        match = _TEMP_NAME.search(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir() or not (entry / STAGING_MARKER).exists():
            continue
        pid = int(next(group for group in match.groups() if group))
        if _is_stale(entry, pid):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def clean_cache_leftovers() -> list[Path]:
    """Staging and scratch folders that killed runs left anywhere in the cache."""
    root = cache_root()
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    removed += clean_stale(root / "work")
    for folder in (root / "exports", root / "compiled", root / "aarch64-runtime", root / "policies"):
        removed += clean_stale(folder)
    return removed


def remove_active() -> None:
    """Hard-exit path (a second interrupt): delete every folder this process is writing."""
    for path in list(_ACTIVE):
        shutil.rmtree(path, ignore_errors=True)
    _ACTIVE.clear()


def cache_root() -> Path:
    """Where exports and other reusable work are cached (EDGEFOLD_CACHE overrides)."""
    root = os.environ.get("EDGEFOLD_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "edgefold"


def write_atomic(path: Path, data: bytes) -> None:
    """Replace one file all-or-nothing (a temp file beside it, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


__all__ = ["OutputClaim", "cache_directory", "cache_root", "claim_output", "clean_cache_leftovers", "clean_stale",
           "is_edgefold_manifest", "output_directory", "read_own_manifest", "remove_active", "scratch_directory",
           "write_atomic"]
