"""Every public function, method and class in the three rooms says what it does.

Public: a name without a leading underscore, at module level or in a public class (functions
nested inside functions, such as TVMScript kernels, are implementation). Pass options are
checked separately: every option has a description (tests/pipeline/test_cli_options.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("pipeline", "passes", "targets")


def _undocumented(path: Path, base: Path = ROOT) -> list[str]:
    missing = []

    def visit(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if not ast.get_docstring(node):
                    missing.append(f"{path.relative_to(base)}:{node.lineno} {prefix}{node.name}")
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{node.name}.")

    visit(ast.parse(path.read_text()).body, "")
    return missing


def test_every_public_function_and_class_has_a_docstring():
    missing = [entry for room in ROOMS for path in sorted((ROOT / room).rglob("*.py")) for entry in _undocumented(path)]
    assert not missing, f"{len(missing)} without a docstring:\n" + "\n".join(missing)


def test_the_check_sees_a_missing_docstring(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('def shown():\n    """Says what."""\n\n\ndef bare():\n    pass\n\n\n'
                      'class Thing:\n    def method(self):\n        return 1\n\n    def _hidden(self):\n        pass\n')
    found = [entry.split(" ", 1)[1] for entry in _undocumented(sample, base=tmp_path)]
    assert found == ["bare", "Thing", "Thing.method"]

