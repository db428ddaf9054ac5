"""The layer rules: import-linter's contracts (pyproject.toml) hold, they catch a violation,
and no module reaches into another module's private names.

import-linter reads the package from disk by its import name. edgefold's rooms live in three
top-level folders mapped onto one package (pyproject's package-dir), which an editable install
resolves at import time but a directory walk cannot see; so each check lays the package out
as a wheel would, in a temporary folder, and points lint-imports at that copy.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = {"": ROOT / "pipeline", "passes": ROOT / "passes", "targets": ROOT / "targets"}

# The one adapter module allowed to touch each third-party private API (see their docstrings).
PRIVATE_API_ADAPTERS = {
    ROOT / "pipeline" / "onnxscript_private.py",  # onnxscript's constant folder and rule sets
    ROOT / "targets" / "tvm" / "converters.py",  # TVM's ONNX importer converter table
}
PUBLIC_UNDERSCORE_NAMES = {"_exit", "_replace", "_asdict", "_fields"}  # stdlib API spelled with "_"


def _installed_layout(destination: Path) -> Path:
    """Copy the three rooms into destination/edgefold the way a wheel installs them."""
    package = destination / "edgefold"
    for sub, source in ROOMS.items():
        shutil.copytree(source, package / sub if sub else package, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


def _lint_imports(site: Path) -> subprocess.CompletedProcess:
    executable = Path(sys.executable).parent / "lint-imports"
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run([str(executable), str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo"],
                          cwd=site, env=env, capture_output=True, text=True, timeout=300)


def test_layer_contracts_hold(tmp_path):
    result = _lint_imports(_installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("passes/fold/fold.py", "from edgefold.targets import profiles", "passes never import targets"),
    ("passes/quantize/gptq.py", "import tvm", "passes never import targets"),
    ("targets/tvm/library.py", "from edgefold.passes.quantize import quant_formats", "targets never import passes"),
    ("passes/slice/slice.py", "from edgefold.passes.fold import fold_math", "one package per pass"),
])
def test_contracts_catch_a_violation(tmp_path, module, line, contract):
    site = _installed_layout(tmp_path)
    target = site / "edgefold" / module
    target.write_text(target.read_text() + f"\n{line}  # injected by the test\n")
    result = _lint_imports(site)
    assert result.returncode != 0
    broken = [row for row in result.stdout.splitlines() if " BROKEN" in row]
    assert any(contract in row for row in broken), result.stdout


def _own_private_names(tree: ast.AST) -> set[str]:
    """Private attributes and methods a module defines itself (its classes may use them freely)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in names if n.startswith("_")}


def _private_uses(path: Path, base: Path = ROOT) -> list[str]:
    """`from m import _x`, imports of `_private` modules, and `obj._x` on anything but self/cls
    unless this module defines `_x` itself."""
    found = []
    tree = ast.parse(path.read_text())
    own = _own_private_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            names = [alias.name for alias in node.names]
            for name in [p for p in parts if p.startswith("_") and not p.startswith("__")] + \
                        [n for n in names if n.startswith("_") and not n.startswith("__")]:
                found.append(f"{path.relative_to(base)}:{node.lineno} imports {name}")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            if node.attr in PUBLIC_UNDERSCORE_NAMES or node.attr in own:
                continue
            found.append(f"{path.relative_to(base)}:{node.lineno} reads {ast.unparse(node)}")
    return found


def test_no_module_reaches_into_private_names():
    sources = [p for room in ROOMS.values() for p in sorted(room.rglob("*.py")) if p not in PRIVATE_API_ADAPTERS]
    found = [use for path in sources for use in _private_uses(path)]
    assert not found, "\n".join(found)


def test_the_private_name_check_sees_a_violation(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from edgefold.targets.tvm.artifact import _secret\nx = other._hidden\ny = self._mine\n"
                      "module._patched = None\n")
    found = _private_uses(sample, base=tmp_path)
    assert [f.split(" ", 1)[1] for f in found] == ["imports _secret", "reads other._hidden", "reads module._patched"]


def test_every_pass_package_is_under_the_contracts_and_packaged():
    """A new pass package must be listed in the independence contract and in the wheel's packages,
    or it would silently escape the rule and the install."""
    import pkgutil
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    independent = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "independence")
    found = {f"edgefold.passes.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "passes")])
             if m.ispkg and m.name != "common"}
    assert set(independent["modules"]) == found
    assert found | {"edgefold.passes.common"} <= set(config["tool"]["setuptools"]["packages"])
