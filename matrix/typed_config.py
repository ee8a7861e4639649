"""Strict TOML → frozen dataclass loading, and the JSON schema of the same classes.

Recipes and the matrix are data a person edits by hand, so a typo must be an
error, not a silently ignored key: every table is checked against the fields of
its dataclass, unknown keys get a "did you mean" suggestion, and every error
names the file and the dotted key. The JSON schema editors use is generated
from the very same classes, so the two can never drift apart.

Supported field types: ``str``, ``int``, ``bool``, ``tuple[T, ...]``,
``dict[str, T]``, ``Literal[...]``, ``T | None``, and nested dataclasses.
Field metadata may carry ``doc`` (schema description), ``pattern`` (regex a
string must match fully), ``minimum`` (for ints) and ``alias`` (the TOML key
when it differs from the Python name); ``from_key`` marks the field filled
from the table's key in a ``dict[str, Dataclass]``, ``internal`` one that
never comes from TOML.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from dxverify.errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a syntax error names the file, line and column."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigurationError(f"{path}: not valid TOML: {e}", hint="fix the syntax at that line") from None


def toml_key(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("alias", f.name))


def suggest(word: str, choices: typing.Iterable[str]) -> str:
    """' (did you mean "x"?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if tp in _TYPE_NAMES:
        return _TYPE_NAMES[tp]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is tuple:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a table"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not type(None))
    return str(tp)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, tp: Any, where: str, meta: Mapping[str, Any]) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported union {tp}")
        return _convert(value, inner[0], where, meta)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            choices = ", ".join(f'"{a}"' for a in allowed)
            sug = suggest(str(value), [str(a) for a in allowed])
            raise ConfigurationError(f"{where}: {value!r} is not allowed{sug}", hint=f"use one of {choices}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigurationError(f"{where}: expected true or false, got {_toml_type(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"{where}: expected an integer, got {_toml_type(value)}")
        if "minimum" in meta and value < meta["minimum"]:
            raise ConfigurationError(f"{where}: {value} is below the minimum {meta['minimum']}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigurationError(f"{where}: expected a string, got {_toml_type(value)}")
        pat = meta.get("pattern")
        if pat and not re.fullmatch(pat, value):
            what = meta.get("pattern_doc", f"match /{pat}/")
            raise ConfigurationError(f"{where}: {value!r} is not valid", hint=f"it must be {what}")
        return value
    if origin is tuple:
        (item_tp, _ellipsis) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigurationError(f"{where}: expected a list, got {_toml_type(value)}")
        return tuple(_convert(v, item_tp, f"{where}[{i}]", meta) for i, v in enumerate(value))
    if origin is dict:
        _k, val_tp = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigurationError(f"{where}: expected a table, got {_toml_type(value)}")
        key_field = _key_field(val_tp)
        if key_field:
            key_tp = _hints(val_tp)[key_field]
            return {str(k): load_dataclass(val_tp, v, f"{where}.{k}",
                                           **{key_field: _convert(str(k), key_tp, f"{where}.{k}", {})})
                    for k, v in value.items()}
        return {str(k): _convert(v, val_tp, f"{where}.{k}", meta) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return load_dataclass(tp, value, where)
    raise TypeError(f"unsupported field type {tp!r}")


def _key_field(tp: Any) -> str | None:
    """The field of a dataclass filled from its table key (metadata ``from_key``), if any."""
    if not dataclasses.is_dataclass(tp):
        return None
    for f in dataclasses.fields(tp):
        if f.metadata.get("from_key"):
            return f.name
    return None


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def load_dataclass(cls: type[T], data: Any, where: str, **extra: Any) -> T:
    """Build ``cls`` from the TOML table ``data``; ``where`` is "file: dotted.key".

    ``extra`` fills fields that do not come from the table (e.g. a tier's name
    from its key, see field metadata ``from_key``). The dataclass's own ``__post_init__`` may raise
    ConfigurationError for rules that span fields.
    """
    if not isinstance(data, dict):
        raise ConfigurationError(f"{where}: expected a table, got {_toml_type(data)}")
    hints = _hints(cls)
    fields = {toml_key(f): f for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if f.init and f.name not in extra and not f.metadata.get("internal")}
    for key in data:
        if key not in fields:
            raise ConfigurationError(
                f"{_join(where, key)}: unknown key{suggest(key, fields)}",
                hint="allowed keys: " + ", ".join(sorted(fields)),
            )
    kwargs: dict[str, Any] = dict(extra)
    for key, f in fields.items():
        if key in data:
            kwargs[f.name] = _convert(data[key], hints[f.name], _join(where, key), f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigurationError(
                f"{where}: missing required key {key!r}",
                hint=f"add {key} = <{_describe(hints[f.name])}>" + (f" ({f.metadata['doc']})" if "doc" in f.metadata else ""),
            )
    try:
        return cls(**kwargs)
    except ConfigurationError as e:
        if e.message.startswith(where):
            raise
        raise ConfigurationError(f"{where}: {e.message}", hint=e.hint) from None


def _join(where: str, key: str) -> str:
    sep = "" if where.endswith(": ") else "."
    if where.endswith(":"):
        sep = " "
    return f"{where}{sep}{key}"


# ---------------------------------------------------------------- JSON schema


def json_schema(cls: type, *, title: str, skip: typing.Iterable[str] = ()) -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of TOML files that load into ``cls``."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title}
    schema.update(_schema_of(cls, skip=set(skip)))
    return schema


def _schema_of(tp: Any, meta: Mapping[str, Any] | None = None, skip: set[str] | None = None) -> dict[str, Any]:
    meta = meta or {}
    origin = get_origin(tp)
    out: dict[str, Any]
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _schema_of(inner[0], meta)
    if origin is Literal:
        out = {"enum": list(get_args(tp))}
    elif tp is bool:
        out = {"type": "boolean"}
    elif tp is int:
        out = {"type": "integer"}
        if "minimum" in meta:
            out["minimum"] = meta["minimum"]
    elif tp is str:
        out = {"type": "string"}
        if "pattern" in meta:
            out["pattern"] = f"^(?:{meta['pattern']})$"
    elif origin is tuple:
        out = {"type": "array", "items": _schema_of(get_args(tp)[0], {k: v for k, v in meta.items() if k != "doc"})}
    elif origin is dict:
        val_tp = get_args(tp)[1]
        out = {"type": "object",
               "additionalProperties": _schema_of(val_tp, {k: v for k, v in meta.items() if k != "doc"})}
        key_field = _key_field(val_tp)
        if key_field:
            out["propertyNames"] = _schema_of(_hints(val_tp)[key_field])
    elif dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        props: dict[str, Any] = {}
        required: list[str] = []
        for f in dataclasses.fields(tp):
            if not f.init or f.name in (skip or set()) or f.metadata.get("from_key") \
                    or f.metadata.get("internal"):
                continue
            key = toml_key(f)
            props[key] = _schema_of(hints[f.name], f.metadata)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(key)
        out = {"type": "object", "additionalProperties": False, "properties": props}
        if required:
            out["required"] = required
        doc = (tp.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        if doc:
            out["description"] = doc
    else:
        raise TypeError(f"unsupported field type {tp!r}")
    if "doc" in meta:
        out = {"description": meta["doc"], **out}
    return out
