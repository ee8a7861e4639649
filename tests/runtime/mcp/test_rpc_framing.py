"""dx.mcp.rpc: JSON-RPC 2.0 messages and MCP's stdio framing (one message per line), for both ends."""

from __future__ import annotations

import io
import json
import threading

import pytest

from dx.mcp import rpc
from dx.mcp.rpc import Notification, Request, Response, RPCError
from dx.mcp.server import check_arguments


def test_encode_is_one_line_even_with_newlines_inside() -> None:
    doc = rpc.result(1, {"content": [{"type": "text", "text": "two\nlines\r\nand \u2028 é"}]})
    line = rpc.encode(doc)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\r" not in line
    assert json.loads(line) == doc
    assert "é".encode() in line  # UTF-8 as is, not \u escapes


@pytest.mark.parametrize(("raw", "expected"), [
    ('{"jsonrpc":"2.0","id":1,"method":"ping"}', Request(1, "ping", {})),
    ('{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"x"}}', Request("a", "tools/call", {"name": "x"})),
    ('{"jsonrpc":"2.0","method":"notifications/initialized"}', Notification("notifications/initialized", {})),
    ('{"jsonrpc":"2.0","id":3,"method":"ping","params":null}', Request(3, "ping", {})),
    ('{"jsonrpc":"2.0","id":4,"result":{}}', Response(4, result={})),
])
def test_parse_each_kind(raw: str, expected: rpc.Message) -> None:
    assert rpc.parse(raw) == expected


def test_parse_error_response() -> None:
    msg = rpc.parse('{"jsonrpc":"2.0","id":5,"error":{"code":-32601,"message":"nope","data":{"x":1}}}')
    assert isinstance(msg, Response) and msg.id == 5 and msg.result is None
    assert msg.error is not None and (msg.error.code, msg.error.message, msg.error.data) == (-32601, "nope", {"x": 1})


@pytest.mark.parametrize(("raw", "code", "answer_id"), [
    ("not json", -32700, None),
    (b"\xff\xfe", -32700, None),
    ('{"jsonrpc":"2.0","id":1,"method":"ping"', -32700, None),  # cut short
    ("[]", -32600, None),  # batches: gone since 2025-06-18
    ('[{"jsonrpc":"2.0","id":1,"method":"ping"}]', -32600, None),
    ('"ping"', -32600, None),
    ('{"id":2,"method":"ping"}', -32600, 2),  # no "jsonrpc": the id is still answered
    ('{"jsonrpc":"2.0","id":3,"method":""}', -32600, 3),
    ('{"jsonrpc":"2.0","id":4,"method":7}', -32600, 4),
    ('{"jsonrpc":"2.0","id":5,"method":"x","params":[1]}', -32600, 5),  # MCP's params are by name
    ('{"jsonrpc":"2.0","id":null,"method":"ping"}', -32600, None),  # MCP: an id is never null
    ('{"jsonrpc":"2.0","id":1.5,"method":"ping"}', -32600, None),
    ('{"jsonrpc":"2.0","id":true,"method":"ping"}', -32600, None),
    ('{"jsonrpc":"2.0","id":6}', -32600, 6),  # neither request nor response
    ('{"jsonrpc":"2.0","id":7,"error":"bad"}', -32600, None),
])
def test_bad_messages_get_their_code_and_id(raw: str | bytes, code: int, answer_id: object) -> None:
    with pytest.raises(RPCError) as info:
        rpc.parse(raw)
    assert info.value.code == code
    answer = rpc.error_for(info.value)
    assert answer["jsonrpc"] == "2.0" and answer["id"] == answer_id and answer["error"]["code"] == code
    assert answer["error"]["message"]


def test_read_message_skips_blank_lines_and_reads_to_eof() -> None:
    stream = io.BytesIO(b'\n  \n{"jsonrpc":"2.0","id":1,"method":"ping"}\r\n{"jsonrpc":"2.0","method":"n"}')
    assert rpc.read_message(stream) == Request(1, "ping", {})
    assert rpc.read_message(stream) == Notification("n", {})  # the last line needs no newline
    assert rpc.read_message(stream) is None


def test_an_overlong_line_is_refused_and_the_next_one_read() -> None:
    big = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"a" * 5000 + b'"}}\n'
    stream = io.BytesIO(big + b'{"jsonrpc":"2.0","id":2,"method":"ping"}\n')
    with pytest.raises(RPCError) as info:
        rpc.read_message(stream, limit=1000)
    assert info.value.code == -32700 and "longer than 1000 bytes" in info.value.message
    assert rpc.read_message(stream, limit=1000) == Request(2, "ping", {})


def test_line_writer_keeps_messages_whole_across_threads() -> None:
    out = io.BytesIO()
    writer = rpc.LineWriter(out)
    docs = [rpc.result(i, {"text": "x" * 10_000}) for i in range(50)]
    threads = [threading.Thread(target=writer.send, args=(d,)) for d in docs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.getvalue().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == list(range(50))


def test_round_trip_through_both_ends() -> None:
    """What one end writes, the other reads back as the same message (the host's side and the server's)."""
    stream = io.BytesIO()
    w = rpc.LineWriter(stream)
    w.send(rpc.request(9, "tools/call", {"name": "generate", "arguments": {"prompt": "hi"}}))
    w.send(rpc.notification("notifications/cancelled", {"requestId": 9}))
    w.send(rpc.error(9, RPCError(-32602, "bad", {"field": "prompt"})))
    stream.seek(0)
    assert rpc.read_message(stream) == Request(9, "tools/call", {"name": "generate", "arguments": {"prompt": "hi"}})
    assert rpc.read_message(stream) == Notification("notifications/cancelled", {"requestId": 9})
    err = rpc.read_message(stream)
    assert isinstance(err, Response) and err.error is not None and err.error.doc() == \
        {"code": -32602, "message": "bad", "data": {"field": "prompt"}}


# ------------------------------------------------------------------ arguments against a tool's schema
SCHEMA = {"type": "object", "properties": {
    "prompt": {"type": "string"}, "n": {"type": "integer", "minimum": 1},
    "t": {"type": "number", "maximum": 2}, "xs": {"type": "array", "items": {"type": "string"}, "maxItems": 2}},
    "required": ["prompt"], "additionalProperties": False}


@pytest.mark.parametrize(("args", "words"), [
    ({}, "f.prompt is required"),
    ({"prompt": None}, "f.prompt must be a string, not null"),
    ({"prompt": "x", "n": True}, "f.n must be an integer, not a boolean"),
    ({"prompt": "x", "n": 1.5}, "f.n must be an integer, not a number"),
    ({"prompt": "x", "n": 0}, "f.n must be at least 1"),
    ({"prompt": "x", "t": 3}, "f.t must be at most 2"),
    ({"prompt": "x", "xs": ["a", 1]}, "f.xs[1] must be a string"),
    ({"prompt": "x", "xs": ["a", "b", "c"]}, "f.xs must have at most 2 items"),
    ({"prompt": "x", "other": 1}, "f.other is not a known argument (known: prompt, n, t, xs)"),
    ([], "f must be an object, not an array"),
])
def test_check_arguments_names_the_field(args: object, words: str) -> None:
    with pytest.raises(RPCError) as info:
        check_arguments(SCHEMA, args, "f")
    assert info.value.code == -32602 and words in info.value.message


def test_check_arguments_accepts_what_fits() -> None:
    check_arguments(SCHEMA, {"prompt": "x", "n": 2, "t": 0.5, "xs": ["a"]}, "f")
    check_arguments(SCHEMA, {"prompt": "x", "n": 2.0}, "f")  # 2.0 is an integer in JSON Schema
