"""manifest.json: what was built from what, reproducibly.

Everything in it is deterministic for the same inputs and seed (hashes, configs,
sizes, fidelity rounded to 6 significant digits); timings and machine facts go to
report.json instead, so two builds of the same recipe give byte-identical manifests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgefold import __version__
from edgefold.atomic import STAGING_MARKER, WRITTEN_BY
from edgefold.hashing import sha256_file

MANIFEST_SCHEMA = 1


def file_hashes(folder: Path, exclude: set[str]) -> dict[str, str]:
    exclude = exclude | {STAGING_MARKER}
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name not in exclude}


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def folder_manifest(folder: Path, **fields: Any) -> dict[str, Any]:
    """The small manifest of a folder that is not a build (an export copy, simulation results):
    it marks the folder as edgefold's and lists its files with their hashes."""
    files = {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != STAGING_MARKER}
    return {"written_by": WRITTEN_BY, "schema": MANIFEST_SCHEMA, "edgefold_version": __version__,
            **fields, "files": files}


def build_manifest(*, model: dict[str, Any], profile: dict[str, Any], recipe: dict[str, Any],
                   passes: list[dict[str, Any]], baseline: dict[str, Any], final: dict[str, Any],
                   files: dict[str, str], versions: dict[str, str], inputs_sha256: str) -> dict[str, Any]:
    return {
        "written_by": WRITTEN_BY,  # how `-o` recognises a folder edgefold may replace
        "inputs_sha256": inputs_sha256,
        "schema": MANIFEST_SCHEMA,
        "edgefold_version": __version__,
        "model": model,
        "profile": profile,
        "recipe": recipe,
        "passes": passes,
        "baseline": baseline,
        "final": final,
        "files": files,
        "versions": versions,
    }
