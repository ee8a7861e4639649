"""The JSON-Schema subset MCP tools declare, checked before any call runs — for both ends.

A tool's ``inputSchema`` is JSON Schema; what tools actually use is small: ``type`` (one or a
list), ``properties``, ``required``, ``enum``, ``const``, ``items``, ``additionalProperties``,
``minimum``/``maximum``, ``minLength``/``maxLength``, ``minItems``/``maxItems``, ``anyOf``/``oneOf``.
Those are checked here; any other keyword is ignored (a call it would refuse reaches the server,
which checks again). The first problem found is returned as one line the model (as a host, ``toolbox``)
or the client (as a server, ``dx.mcp.server`` answers it as -32602) can read and fix.
"""

from __future__ import annotations

from typing import Any

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_MAX_DEPTH = 32


def validate(value: Any, schema: Any, where: str = "arguments") -> str | None:
    """None when ``value`` fits ``schema``, else the first problem (``arguments.x must be a string, not null``)."""
    return _check(value, schema, where, 0)


def _check(value: Any, schema: Any, at: str, depth: int) -> str | None:
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None  # true / {} / too deep: anything goes
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            problems = [_check(value, o, at, depth + 1) for o in options]
            if all(p is not None for p in problems):
                return problems[0]
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        known = [k for k in kinds if k in _TYPES]
        if known and not any(_TYPES[k](value) for k in known):
            return f"{at} must be {' or '.join(_a(k) for k in known)}, not {_a(_name(value))}"
    if "enum" in schema and isinstance(schema["enum"], list) and value not in schema["enum"]:
        return f"{at} must be one of {', '.join(repr(e) for e in schema['enum'][:10])}"
    if "const" in schema and value != schema["const"]:
        return f"{at} must be {schema['const']!r}"
    if isinstance(value, str):
        if isinstance(schema.get("minLength"), int) and len(value) < schema["minLength"]:
            return f"{at} must have at least {schema['minLength']} character(s)"
        if isinstance(schema.get("maxLength"), int) and len(value) > schema["maxLength"]:
            return f"{at} must have at most {schema['maxLength']} characters"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(schema.get("minimum"), (int, float)) and value < schema["minimum"]:
            return f"{at} must be at least {schema['minimum']}"
        if isinstance(schema.get("maximum"), (int, float)) and value > schema["maximum"]:
            return f"{at} must be at most {schema['maximum']}"
    if isinstance(value, dict):
        return _object(value, schema, at, depth)
    if isinstance(value, list):
        if isinstance(schema.get("minItems"), int) and len(value) < schema["minItems"]:
            return f"{at} must have at least {schema['minItems']} item(s)"
        if isinstance(schema.get("maxItems"), int) and len(value) > schema["maxItems"]:
            return f"{at} must have at most {schema['maxItems']} items"
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problem = _check(item, schema["items"], f"{at}[{i}]", depth + 1)
            if problem:
                return problem
    return None


def _object(value: dict[str, Any], schema: dict[str, Any], at: str, depth: int) -> str | None:
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    for name in required:
        if isinstance(name, str) and name not in value:
            return f"{at}.{name} is required"
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in props:
            problem = _check(item, props[name], f"{at}.{name}", depth + 1)
        elif extra is False:
            problem = f"{at}.{name} is not a known argument (known: {', '.join(props) or 'none'})"
        else:
            problem = _check(item, extra, f"{at}.{name}", depth + 1)
        if problem:
            return problem
    return None


def _name(value: Any) -> str:
    for kind in ("boolean", "null", "integer", "number", "string", "array", "object"):
        if _TYPES[kind](value):
            return kind
    return type(value).__name__


def _a(kind: str) -> str:
    """``string`` -> ``a string``; ``null`` stays ``null``."""
    return kind if kind == "null" else f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"
