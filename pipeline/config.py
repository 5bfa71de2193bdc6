"""Typed configuration of the jobs: one YAML file plus `key=value` overrides, validated strictly before any work.

`load_config(IngestConfig, path, overrides)` validates the tree with pydantic (a `TypeAdapter` over the frozen
dataclasses, strict: no boolean for an integer, no string for a number; an integer is a valid number), rejects
unknown keys (listing the valid ones) and runs the dataclasses' own value checks. Every problem becomes one
line `Class.key.path: what was expected, what was found` of a `ConfigError`; YAML syntax errors read
`file:line:col: message`. YAML timestamps are not resolved: `datetime: 2017-06-01T00:00:00Z/..` stays text and
is checked by `pipeline.times`. `to_dict`/`to_yaml` give the resolved config with defaults (saved with the
outputs, printed by `--print-config`). Packages never read the environment; the job passes what it needs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.errors import ConfigError

__all__ = ["ConfigError", "load_config", "parse_overrides", "read_yaml", "to_dict", "to_yaml", "validate"]

T = TypeVar("T")
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class _Loader(yaml.SafeLoader):
    """Safe YAML without timestamp resolution (dates stay strings, checked as RFC 3339 by the config)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _TIMESTAMP]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark, context = err.problem_mark or err.context_mark, err.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        what = err.problem or err.context or "invalid YAML"
        if err.context and context is not None and context is not mark:
            what += f" ({err.context} at {context.line + 1}:{context.column + 1})"
        raise ConfigError(f"{where}: {what}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: {err}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file (empty file: `{}`).

    Raises:
        ConfigError: Missing file, YAML syntax error (`file:line:col: message`) or not a mapping at the top.
    """
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {file}: {err.strerror or err}") from None
    tree = _yaml(text, str(file))
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{file}: expected a mapping of keys at the top, got {type(tree).__name__}")
    return tree


def _set(tree: dict[str, Any], dotted: str, value: Any, item: str) -> None:
    node: Any = tree
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {item}: {'.'.join(parts[:depth]) or 'the config'} is a list of "
                                  f"{len(node)} items; use an index 0..{len(node) - 1}")  # fmt: skip
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {item}: {'.'.join(parts[:depth])} is a value, not a mapping or list")


def parse_overrides(tree: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides (values read as YAML scalars or flow lists) to `tree`, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} must look like key.sub=value")
        _set(tree, key.strip(), _yaml(raw, f"--set {key.strip()}"), item)
    return tree


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from a YAML file and `key.sub=value` overrides, validated (see the module docstring).

    Raises:
        ConfigError: The file cannot be read or parsed, or keys or values are invalid (one line per problem,
            each naming its key path).
    """
    tree = read_yaml(path) if path else {}
    return validate(cls, parse_overrides(tree, overrides))


@functools.cache
def _adapter(cls: type) -> Any:
    from pydantic import ConfigDict, TypeAdapter

    # the config of a TypeAdapter applies to the stdlib dataclasses inside the type, not to one at its root
    return TypeAdapter(list[cls], config=ConfigDict(strict=True, extra="forbid"))  # type: ignore[valid-type]


def validate(cls: type[T], tree: Mapping[str, Any]) -> T:
    """`cls` built from a plain tree (as read from YAML), strictly validated.

    Raises:
        ConfigError: One line per problem, `Class.key.path: message`.
    """
    from pydantic import ValidationError

    try:
        text = json.dumps([tree], allow_nan=True)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{cls.__name__}: the config holds a value YAML cannot pass on as plain data: {err}") from None
    try:
        return typing.cast(T, _adapter(cls).validate_json(text)[0])
    except ValidationError as err:
        raise ConfigError("\n".join(_messages(cls, tree, err.errors()))) from None


# -- messages ---------------------------------------------------------------------------------------------------
_EXPECTED = {"int": "an integer", "float": "a number", "string": "a string", "bool": "true or false",
             "list": "a list", "tuple": "a list", "dict": "a mapping", "dataclass": "a mapping",
             "mapping": "a mapping"}  # fmt: skip


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _union_members(tp: Any) -> list[Any]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def _resolve(root: type, loc: Sequence[Any]) -> tuple[list[str], Any, int | None]:
    """Walk pydantic's error location through the types: the user's key path, the type there, the union depth."""
    path: list[str] = []
    tp: Any = root
    union_at = None
    for part in loc:
        members = _union_members(tp)
        if len(members) > 1:  # pydantic names the union member tried (`str`, `Modality`, …)
            union_at = len(path)
            tp = next((m for m in members if getattr(m, "__name__", str(m)) == part), members[0])
            continue
        tp = members[0]
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp) and isinstance(part, str):
            tp = _hints(tp).get(part, Any)
        elif origin is tuple and isinstance(part, int):
            args = typing.get_args(tp)
            tp = args[0] if len(args) == 2 and args[1] is Ellipsis else (args[part] if part < len(args) else Any)
        elif origin in (Mapping, dict, typing.Mapping) or tp is Mapping:
            args = typing.get_args(tp)
            tp = args[1] if len(args) == 2 and part != "[key]" else str
        else:
            tp = Any
        path.append(str(part))
    return path, tp, union_at


def _got(value: Any) -> str:
    if isinstance(value, bool):
        return f"{value} (YAML reads yes/no/on/off/true/false as booleans)"
    text = json.dumps(value) if isinstance(value, list | dict) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _node(tree: Any, path: Sequence[str]) -> Any:
    for part in path:
        if isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        elif isinstance(tree, dict) and part in tree:
            tree = tree[part]
        else:
            return None
    return tree


def _message(err: Mapping[str, Any], parent: Any, here: Any, tree: Any, path: list[str]) -> tuple[str, str]:
    """(where, message) for one pydantic error; `here` is the type at its location, `parent` its container's."""
    kind, value = str(err["type"]), err.get("input")
    base = kind.removesuffix("_type").removesuffix("_parsing").removesuffix("_from_float")
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        valid = sorted(f.name for f in dataclasses.fields(parent)) if dataclasses.is_dataclass(parent) else []
        return ".".join(path[:-1]), f"unknown key {path[-1]!r}; valid keys are {valid}"
    if kind == "missing":
        container = _node(tree, path[:-1])
        if isinstance(container, list):
            return ".".join(path[:-1]), f"too few items: got {len(container)}, item {path[-1]} is missing"
        return ".".join(path), "missing required key"
    if kind == "too_long":
        return ".".join(path), f"too many items: expected {err.get('ctx', {}).get('max_length')}, got {len(value)}"
    if kind == "literal_error":
        return ".".join(path), f"expected one of {err['ctx']['expected']}, got {_got(value)}"
    if kind == "value_error":  # a dataclass's own check; "key: message" names one of its keys
        message = str(err.get("ctx", {}).get("error", err["msg"]))
        key, sep, rest = message.partition(": ")
        if sep and dataclasses.is_dataclass(here) and key in {f.name for f in dataclasses.fields(here)}:
            return ".".join([*path, key]), rest
        return ".".join(path), message
    if base in _EXPECTED:
        return ".".join(path), f"expected {_EXPECTED[base]}, got {_got(value)}"
    return ".".join(path), f"{err['msg']}, got {_got(value)}"


def _messages(cls: type, tree: Any, errors: Sequence[Mapping[str, Any]]) -> list[str]:
    resolved = []
    for err in errors:
        loc = list(err["loc"])[1:]  # drop the list index of the adapter's wrapper
        path, here, union_at = _resolve(cls, loc)
        parent = _union_members(_resolve(cls, loc[:-1])[1])[0] if loc else cls
        resolved.append((path, union_at, _message(err, parent, _union_members(here)[0], tree, path)))
    lines: dict[str, list[str]] = {}
    for path, union_at, (where, message) in resolved:
        # a union member that failed only on its type is noise when another member got further
        deeper = union_at is not None and any(p[:union_at] == path[:union_at] and len(p) > len(path)
                                              for p, u, _ in resolved if u == union_at)  # fmt: skip
        if union_at is not None and len(path) == union_at and deeper:
            continue
        lines.setdefault(where, [])
        if message not in lines[where]:
            lines[where].append(message)
    out = []
    for where, messages in lines.items():
        if len(messages) > 1 and all(m.startswith("expected ") for m in messages):
            got = messages[0].split(", got ", 1)[-1]
            wanted = [m.split(", got ", 1)[0].removeprefix("expected ") for m in messages]
            messages = [f"expected {' or '.join(wanted)}, got {got}"]
        out += [f"{cls.__name__}{'.' + where if where else ''}: {m}" for m in messages]
    return out


# -- plain form -------------------------------------------------------------------------------------------------
def to_dict(config: Any) -> Any:
    """Plain dicts/lists of a config (for YAML/JSON next to the outputs)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, tuple | list):
        return [to_dict(v) for v in config]
    return config


def to_yaml(config: Any) -> str:
    """The resolved config with every default, as YAML (what `--print-config` prints)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=None, width=120)
