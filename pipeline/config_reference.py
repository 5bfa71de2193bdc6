"""The config reference, generated from the schema: every key of a config dataclass, its type, default and text.

`reference(cls)` walks the dataclass fields (nested dataclasses, lists of them and union members that are
dataclasses) and reads each key's description from its class's docstring (`Attributes:` section), so the
reference cannot drift from the code: `docs/CONFIG.md` is written from it and a test checks it is current.
`undocumented(cls)` lists keys whose class docstring does not describe them.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from pipeline.config import to_dict

__all__ = ["Row", "reference", "rows", "type_name", "undocumented"]

_SIMPLE = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}


@dataclasses.dataclass(frozen=True)
class Row:
    """One key of a config: its dotted path (`[]` for list items), type, default and description."""

    key: str
    type: str
    default: str
    description: str


def _described(cls: type) -> dict[str, str]:
    """`name: text` entries of the `Attributes:` section of a class docstring (continuation lines joined)."""
    doc = inspect.getdoc(cls) or ""
    if "Attributes:" not in doc:
        return {}
    out: dict[str, str] = {}
    current = None
    for line in doc.split("Attributes:", 1)[1].splitlines():
        if line and not line.startswith(" "):
            break  # the next section
        match = re.match(r"^    (\w+): (.*)$", line)
        if match:
            current = match.group(1)
            out[current] = match.group(2).strip()
        elif current and line.startswith("        "):
            out[current] += " " + line.strip()
    return out


def type_name(tp: Any) -> str:
    """A reader's name for a type: `integer`, `list of number`, `mapping string → integer`, …"""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _SIMPLE:
        return _SIMPLE[tp]
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin in (Mapping, dict) or tp is Mapping:
        return f"mapping {type_name(args[0])} → {type_name(args[1])}" if args else "mapping"
    return getattr(tp, "__name__", str(tp))


def _default(field: dataclasses.Field[Any]) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "see below"
    return "`" + json.dumps(to_dict(value), ensure_ascii=False) + "`"


def _nested(tp: Any) -> Iterator[tuple[str, type]]:
    """Dataclasses inside a field type, with the key suffix that reaches them (`` or `[]`)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        yield "", tp
    elif origin in (typing.Union, types.UnionType):
        for a in args:
            yield from _nested(a)
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        yield from (("[]" + s, c) for s, c in _nested(args[0]))


def rows(cls: type, prefix: str = "") -> list[Row]:
    """Every key of `cls` in field order, nested keys right after their parent."""
    hints, text = typing.get_type_hints(cls), _described(cls)
    out: list[Row] = []
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        out.append(Row(key, type_name(hints[field.name]), _default(field), text.get(field.name, "")))
        for suffix, sub in _nested(hints[field.name]):
            out += rows(sub, f"{key}{suffix}.")
    return out


def undocumented(cls: type) -> list[str]:
    """Keys whose description is missing from their class docstring."""
    return [r.key for r in rows(cls) if not r.description]


def reference(cls: type, *, title: str | None = None) -> str:
    """Markdown: a heading, the class's summary line and one table row per key."""
    summary = (inspect.getdoc(cls) or "").split("\n\n", 1)[0].replace("\n", " ")
    lines = [f"## {title or cls.__name__}", "", summary, "", "| key | type | default | description |",
             "|---|---|---|---|"]  # fmt: skip
    for r in rows(cls):
        cells = (f"`{r.key}`", r.type, r.default, r.description)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
