"""dx.server.request_json.parse_strict: what every JSON body passes before DX acts on it or relays it."""

from __future__ import annotations

import json

import pytest

from dx.errors import BadRequest, InvalidJSON
from dx.server.request_json import parse_strict

REJECTED = {
    "lone high surrogate": (b'{"prompt": "\\ud800"}', "lone UTF-16 surrogate"),
    "lone low surrogate": (b'{"prompt": "a\\udc00b"}', "lone UTF-16 surrogate"),
    "surrogate pair reversed": (b'{"prompt": "\\ude00\\ud83d"}', "lone UTF-16 surrogate"),
    "lone surrogate in a key": (b'{"\\udbff": 1}', "lone UTF-16 surrogate"),
    "UTF-8-encoded surrogate": (b'{"prompt": "\xed\xa0\x80"}', "not UTF-8"),
    "invalid UTF-8": (b'{"prompt": "\xff"}', "not UTF-8"),
    "overlong UTF-8": (b'{"prompt": "\xc0\xaf"}', "not UTF-8"),
    "double overflow": (b'{"temperature": 1e309}', "does not fit a double"),
    "negative double overflow": (b'{"temperature": -1e309}', "does not fit a double"),
    "exponent with leading zeros": (b'{"temperature": 1E+0309}', "does not fit a double"),
    "overflow written out": (b'{"x": ' + b"9" * 400 + b".5}", "does not fit a double"),
    "NaN": (b'{"temperature": NaN}', "NaN is not a JSON number"),
    "Infinity": (b'{"temperature": Infinity}', "Infinity is not a JSON number"),
    "-Infinity": (b'{"x": [1, -Infinity]}', "-Infinity is not a JSON number"),
    "int past int64": (b'{"seed": 9223372036854775808}', "does not fit in 64 bits"),
    "int below int64": (b'{"seed": -9223372036854775809}', "does not fit in 64 bits"),
    "int of 5000 digits": (b'{"seed": ' + b"1" * 5000 + b"}", "does not fit in 64 bits"),
    # whatever comes before a number (the quick check looks for 19 digits after one of these)
    "int after a newline and tab": (b'{"seed":\n\t18446744073709551616}', "does not fit in 64 bits"),
    "int after a colon": (b'{"seed":18446744073709551616}', "does not fit in 64 bits"),
    "int in an array": (b'{"x":[1,\r\n-18446744073709551616]}', "does not fit in 64 bits"),
    "exponent after a fraction": (b'{"x":[0.5e+400]}', "does not fit a double"),
    "not an object": (b"[1, 2]", "must be a JSON object"),
    "empty": (b"", "needs a JSON body"),
    "trailing comma": (b'{"a": 1,}', "invalid JSON"),
    "nested too deeply": (b"[" * 100_000, "nested too deeply"),
}


@pytest.mark.parametrize("body,needle", REJECTED.values(), ids=REJECTED.keys())
def test_rejected_bodies_are_a_bad_request_in_one_line(body: bytes, needle: str) -> None:
    with pytest.raises(InvalidJSON) as e:
        parse_strict(body)
    assert isinstance(e.value, BadRequest)  # the server answers 400 in the API's own shape
    assert needle in str(e.value)
    assert "\n" not in str(e.value) and len(str(e.value)) < 200


def test_what_is_in_range_is_kept_exactly() -> None:
    doc = parse_strict(
        b'{"pair": "\\ud83d\\ude00", "max": 9223372036854775807, "min": -9223372036854775808,'
        b' "big": 1.7976931348623157e308, "tiny": 1e-400, "words": "NaN Infinity 1e309 99999999999999999999",'
        b' "escaped": "\\\\ud800", "utf8": "h\xc3\xa9llo \xf0\x9f\x98\x80"}'
    )
    assert doc == {
        "pair": "\U0001f600", "max": 2**63 - 1, "min": -(2**63), "big": 1.7976931348623157e308, "tiny": 0.0,
        "words": "NaN Infinity 1e309 99999999999999999999", "escaped": "\\ud800", "utf8": "héllo \U0001f600",
    }


def test_a_body_json_dumps_writes_parses_as_json_loads_does() -> None:
    doc = {"model": "smollm2", "messages": [{"role": "user", "content": "héllo 😀 " * 50}],
           "options": {"temperature": 0.25, "seed": 123456789012345678, "stop": ["\n"]}}
    for ensure_ascii in (True, False):
        body = json.dumps(doc, ensure_ascii=ensure_ascii).encode()
        assert parse_strict(body) == json.loads(body) == doc
