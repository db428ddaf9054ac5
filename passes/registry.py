"""Passes by name, and the `NAME[:key=value,...]` spec syntax of the CLI."""

from __future__ import annotations

import json
from typing import Any

from pathlib import Path

import pydantic

from edgefold.errors import EdgefoldError
from edgefold.passes.base import GraphPass

_REGISTRY: dict[str, type[GraphPass]] = {}


def register_pass(cls: type[GraphPass]) -> type[GraphPass]:
    """Class decorator: make the pass available under its `name` (two classes with one name is an error)."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"pass name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available_passes() -> dict[str, type[GraphPass]]:
    """Every registered pass by name, sorted, the built-in passes included."""
    _load_builtin_passes()
    return dict(sorted(_REGISTRY.items()))


# Modules in this package that are helpers, not passes (importing them registers nothing).
_NOT_PASS_MODULES = {"base", "registry", "options", "common"}


def _load_builtin_passes() -> None:
    # Importing a pass package registers its pass. Discovered rather than listed so a
    # new pass is one new package; kept lazy so `import edgefold` stays cheap.
    import importlib
    import pkgutil

    import edgefold.passes as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in _NOT_PASS_MODULES and not info.name.startswith("_"):
            importlib.import_module(f"edgefold.passes.{info.name}")


def create_pass(name: str, options: dict[str, Any] | None = None, base_dir: Path | None = None) -> GraphPass:
    """`base_dir`: where relative file options (the config's PATH_OPTIONS) start; a recipe passes
    its own folder so `policy = "p.pt"` means the file beside the recipe wherever it runs from."""
    passes = available_passes()
    if name not in passes:
        known = ", ".join(passes) or "none"
        raise EdgefoldError(f"unknown pass {name!r} (available: {known})")
    cls = passes[name]
    options = dict(options or {})
    if base_dir is not None:
        for key in cls.Config.PATH_OPTIONS:
            if isinstance(options.get(key), str) and not Path(options[key]).expanduser().is_absolute():
                options[key] = str(Path(base_dir) / options[key])
    try:
        config = cls.Config(**options)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
        )
        raise EdgefoldError(f"bad options for pass {name!r}: {problems}") from None
    return cls(config)


def parse_pass_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`fold:ratio=0.2,seed=1` -> ("fold", {"ratio": 0.2, "seed": 1}).

    Values are parsed as JSON when they can be (numbers, true/false, lists), else kept
    as strings, so `format=int4` and `ratio=0.2` both do the obvious thing.
    """
    name, _, rest = spec.strip().partition(":")
    if not name:
        raise EdgefoldError(f"bad pass spec {spec!r}: expected NAME[:key=value,...]")
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in _split_top_level(rest))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise EdgefoldError(f"bad pass spec {spec!r}: {item!r} is not key=value")
        options[key.strip()] = _parse_value(raw.strip())
    return name, options


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside [...] so list values survive."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    if raw.startswith("[") and raw.endswith("]"):
        # Bare words in a list, as in `structures=[ffn,conv]`: no quotes needed on a command line.
        return [_parse_value(item.strip()) for item in _split_top_level(raw[1:-1]) if item.strip()]
    return raw
