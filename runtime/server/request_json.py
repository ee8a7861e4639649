"""The JSON a client sends, checked before DX acts on it or relays it to the engine.

Python's ``json`` is more lenient than the engine's parser (nlohmann::json):
it takes ``NaN``/``Infinity``, turns ``1e309`` into ``inf``, keeps integers of
any size and lets a lone surrogate escape (``"\\ud800"``) through. Relayed as
is, such a body makes the engine answer 500. ``parse_strict`` accepts only
what RFC 8259 calls interoperable: UTF-8 text, finite doubles, integers within
int64, strings of Unicode scalar values; anything else is the client's error
(400 in the API's own shape) and never reaches the engine.

It runs on every request, so the common case is one C-level ``json`` decode plus
a few substring searches over the bytes; the per-number checks run only for a
body that could hold an out-of-range number, the surrogate check only for one
that escapes a surrogate.
"""

from __future__ import annotations

import json
import math
from typing import Any

from dx.errors import InvalidJSON

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# A number out of range needs 19+ digits before its point (an integer past int64,
# or a double past 1.8e308 written out) or a 3-digit exponent. A number starts
# after "[", ",", ":" or whitespace (and a sign); with those mapped to ",", digits
# to "0", "E" to "e" and signs dropped, both are plain substring searches, and
# the 19 digits of a fraction (0.0012345678901234567, after ".") do not count.
# Inside a string such a run is harmless: the checked decode then finds nothing.
_NUMBER_SHAPE = bytes.maketrans(b"123456789E[: \t\n\r", b"000000000e,,,,,,")
_LONG_DIGITS, _LONG_EXPONENT = b"," + b"0" * 19, b"e000"



def _reject_constant(name: str) -> Any:
    raise InvalidJSON(f"invalid JSON: {name} is not a JSON number")


def _checked_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidJSON(f"invalid JSON: the number {_short(text)} does not fit a double")
    return value


def _checked_int(text: str) -> int:
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidJSON(f"invalid JSON: the integer {_short(text)} does not fit in 64 bits")
    return value


def _short(text: str) -> str:
    return text if len(text) <= 40 else f"{text[:20]}…({len(text)} characters)"


# NaN/Infinity/-Infinity reach parse_constant only when they occur, so it costs nothing otherwise.
_PLAIN = json.JSONDecoder(parse_constant=_reject_constant)
_CHECKED = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_checked_float, parse_int=_checked_int)


def parse_strict(body: bytes) -> dict[str, Any]:
    """``body`` as a JSON object, or InvalidJSON saying what is wrong with it (one line)."""
    if not body:
        raise InvalidJSON("the request needs a JSON body")
    try:
        text = body.decode("utf-8")  # strict: refuses UTF-8-encoded surrogates and overlong forms too
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"invalid JSON: not UTF-8 (byte {exc.start}: {exc.reason})") from None
    shape = body.translate(_NUMBER_SHAPE, b"+-")
    decoder = _CHECKED if _LONG_DIGITS in shape or _LONG_EXPONENT in shape else _PLAIN
    try:
        doc = decoder.decode(text)
    except InvalidJSON:
        raise
    except ValueError as exc:  # JSONDecodeError, and int() past sys.get_int_max_str_digits()
        if "integer string conversion" in str(exc):
            raise InvalidJSON("invalid JSON: an integer does not fit in 64 bits") from None
        raise InvalidJSON(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise InvalidJSON("invalid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise InvalidJSON("the request body must be a JSON object")
    # Only a \\uD800-\\uDFFF escape can put a surrogate past the strict decode; a pair becomes
    # one code point, a lone one stays and cannot be encoded.
    if b"\\u" in body and (b"\\ud" in body or b"\\uD" in body) and _lone_surrogate(doc):
        raise InvalidJSON("invalid JSON: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)")
    return doc


def _lone_surrogate(doc: Any) -> bool:
    """Any string, key or value, that UTF-8 cannot encode (one C-level encode per string)."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
