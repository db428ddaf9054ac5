"""Every Python package folder is listed in pyproject.toml, so a non-editable install has it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOMS = {"pipeline": "edgefold", "passes": "edgefold.passes", "targets": "edgefold.targets"}


def test_all_packages_are_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for folder, prefix in ROOMS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((prefix, *parts)) if parts else prefix)
    assert found - listed == set(), f"add to pyproject.toml packages: {sorted(found - listed)}"
