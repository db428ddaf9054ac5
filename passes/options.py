"""What a pass option is, in words: name, type, default, allowed values, description.

`edgefold passes` prints these rows; the test that every option is described reads them too,
so the help and the check cannot drift apart."""

from __future__ import annotations

import typing
from dataclasses import dataclass

import annotated_types
import pydantic
from pydantic_core import PydanticUndefined


@dataclass(frozen=True)
class OptionDoc:
    """One pass option in words, as `edgefold passes` prints it."""

    name: str
    type: str
    default: str
    allowed: str
    description: str


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "choice"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        names = [_type_name(a) for a in typing.get_args(annotation) if a is not type(None)]
        optional = type(None) in typing.get_args(annotation)
        return " | ".join(names) + (" | none" if optional else "")
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        key, value = typing.get_args(annotation) or (str, object)
        return f"dict {_type_name(key)} -> {_type_name(value)}"
    return getattr(annotation, "__name__", str(annotation))


def _literals(annotation) -> list:
    """Literal values anywhere in the annotation (Optional[Literal[...]], list[Literal[...]])."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    found = []
    for arg in typing.get_args(annotation):
        found += _literals(arg)
    return found


def _bounds(field: pydantic.fields.FieldInfo) -> str:
    words = []
    for item in field.metadata:
        for attribute, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, attribute, None)
            if value is not None and isinstance(item, (annotated_types.Ge, annotated_types.Gt, annotated_types.Le,
                                                       annotated_types.Lt, annotated_types.Interval)):
                words.append(f"{symbol} {value:g}" if isinstance(value, float) else f"{symbol} {value}")
    return ", ".join(words)


def _default(field: pydantic.fields.FieldInfo) -> str:
    if field.default_factory is not None:
        return repr(field.default_factory())
    if field.default is PydanticUndefined:
        return "(required)"
    if field.default is None:
        return "none"
    return repr(field.default)


def option_docs(config: type[pydantic.BaseModel]) -> list[OptionDoc]:
    """One row per option of a pass config: name, type, default, allowed values and description."""
    rows = []
    for name, field in config.model_fields.items():
        literals = _literals(field.annotation)
        allowed = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in literals) or _bounds(field)
        rows.append(OptionDoc(name=name, type=_type_name(field.annotation), default=_default(field),
                              allowed=allowed, description=(field.description or "").strip()))
    return rows
