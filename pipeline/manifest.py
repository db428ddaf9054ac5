"""manifest.json: what was built from what, reproducibly.

Everything in it is deterministic for the same inputs and seed (hashes, configs,
sizes, fidelity rounded to 6 significant digits); timings and machine facts go to
report.json instead, so two builds of the same recipe give byte-identical manifests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

from edgefold import __version__
from edgefold.atomic import STAGING_MARKER, WRITTEN_BY
from edgefold.hashing import sha256_file

MANIFEST_SCHEMA = 1


# The build's manifest is a JSON document handed from stage to stage as an object: these
# TypedDicts are its schema (a type checker sees every section; the bytes written stay the same).
class ModelSection(TypedDict):
    """`model`: what the build started from."""

    name: str
    task: str
    source_sha256: str
    export_max_abs_error: float | None
    params: int
    file_bytes: int


class ProfileSection(TypedDict):
    """`profile`: the device profile, by name and content hash."""

    name: str
    sha256: str


class RecipeSection(TypedDict):
    """`recipe`: the settings that decided the output (seed, passes with options, eval, gates)."""

    seed: int
    passes: list[dict[str, Any]]
    eval: dict[str, Any]
    gates: dict[str, Any]


class FinalSection(TypedDict):
    """`final`: the compressed model written to the folder, and its task metrics."""

    params: int
    file_bytes: int
    metrics: dict[str, float]


class BuildManifest(TypedDict, total=False):
    """A build's manifest.json; `compile` is added by the compile stage, `files` by whichever
    stage writes the folder's last file."""

    written_by: str
    inputs_sha256: str
    schema: int
    edgefold_version: str
    model: ModelSection
    profile: ProfileSection
    recipe: RecipeSection
    passes: list[dict[str, Any]]  # compress.PassRecord.manifest_entry() per pass
    baseline: dict[str, float]
    final: FinalSection
    versions: dict[str, str]
    compile: dict[str, Any]  # targets.tvm.artifact: buckets, libraries, checks
    files: dict[str, str]  # file name -> sha256


def file_hashes(folder: Path, exclude: set[str]) -> dict[str, str]:
    """sha256 of each file directly in `folder`, by file name, leaving out `exclude` and the staging marker."""
    exclude = exclude | {STAGING_MARKER}
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name not in exclude}


def write_json(path: Path, value: Any) -> None:
    """Write `value` to `path` as indented JSON with sorted keys and a trailing newline."""
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def folder_manifest(folder: Path, **fields: Any) -> dict[str, Any]:
    """The small manifest of a folder that is not a build (an export copy, simulation results):
    it marks the folder as edgefold's and lists its files with their hashes."""
    files = {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != STAGING_MARKER}
    return {"written_by": WRITTEN_BY, "schema": MANIFEST_SCHEMA, "edgefold_version": __version__,
            **fields, "files": files}


def build_manifest(*, model: ModelSection, profile: ProfileSection, recipe: RecipeSection,
                   passes: list[dict[str, Any]], baseline: dict[str, float], final: FinalSection,
                   versions: dict[str, str], inputs_sha256: str) -> BuildManifest:
    """A build's manifest without `files`: the stage that writes the folder's last file adds the
    hashes (the build itself, or the TVM compile with its own section)."""
    return BuildManifest(**{
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
        "versions": versions,
    })
