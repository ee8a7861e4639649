"""Fast tests of the server's pure parts: keep-alive, option mapping, auth, SSE parsing, engine lookup."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from dx.engine.keep_alive import parse_keep_alive
from dx.engine.locate import locate_engine
from dx.models.source import ModelSource
from dx.server.auth import check_bind_policy, is_loopback, key_matches, load_or_create_api_key
from dx.server.ollama_wire import (
    BadRequest,
    chat_request,
    done_fields,
    generate_request,
    map_format,
    map_options,
    sse_events,
)
from dx.server.wire import Headers
from dxverify.errors import ConfigurationError


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, 300.0), ("5m", 300.0), ("1h30m", 5400.0), ("10s", 10.0), ("250ms", 0.25), (0, 0.0), ("0", 0.0),
     (42, 42.0), (1.5, 1.5), (-1, None), ("-1", None), ("-5m", None)],
)
def test_keep_alive_follows_ollama(value: object, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "m5", True, [], {}])
def test_keep_alive_rejects_garbage(value: object) -> None:
    with pytest.raises(ValueError):
        parse_keep_alive(value)


def test_model_source_engine_argument_uses_the_offset_syntax() -> None:
    assert ModelSource(Path("/m/a.gguf")).engine_model_arg == "/m/a.gguf"
    embedded = ModelSource(Path("/bin/dx-smol"), offset=65536, length=100, name="smol")
    assert embedded.engine_model_arg == "/bin/dx-smol#offset=65536"
    assert embedded.size() == 100
    assert embedded.display_name == "smol"


def test_options_map_onto_engine_fields() -> None:
    fields, load = map_options(
        {"temperature": 0.2, "top_k": 5, "top_p": 0.9, "num_predict": 7, "seed": 3, "stop": ["\n"],
         "repeat_penalty": 1.1, "num_ctx": 2048, "num_thread": 2, "unknown_knob": 1}
    )
    assert fields == {"temperature": 0.2, "top_k": 5, "top_p": 0.9, "max_tokens": 7, "seed": 3, "stop": ["\n"],
                      "repeat_penalty": 1.1}
    assert load is not None and load.ctx == 2048 and load.args == ("-t", "2")
    assert map_options({"num_predict": -1}) == ({}, None)


@pytest.mark.parametrize(
    "options",
    ["hot", {"temperature": "hot"}, {"top_k": 1.5}, {"seed": True}, {"stop": [1]}, {"num_ctx": -4}, {"num_ctx": "x"}],
)
def test_options_with_wrong_types_are_bad_requests(options: object) -> None:
    with pytest.raises(BadRequest):
        map_options(options)


def test_format_maps_to_response_format() -> None:
    assert map_format("json") == {"response_format": {"type": "json_object"}}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert map_format(schema)["response_format"]["json_schema"]["schema"] == schema
    with pytest.raises(BadRequest):
        map_format(3)


def test_chat_request_translation() -> None:
    body, num_ctx = chat_request({
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "options": {"temperature": 0},
        "stream": False,
    })
    assert body == {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "stream": False}
    assert num_ctx is None
    streamed, _ = chat_request({"messages": [{"role": "user", "content": "hi"}]})
    assert streamed["stream"] is True and streamed["stream_options"] == {"include_usage": True}
    tools, _ = chat_request({"messages": [{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": {"x": 1}}}]}]})
    call = tools["messages"][0]["tool_calls"][0]
    assert call["function"] == {"name": "f", "arguments": json.dumps({"x": 1})}


@pytest.mark.parametrize(
    "doc",
    [{"messages": "hi"}, {"messages": [1]}, {"messages": [{"content": "x"}]},
     {"messages": [{"role": "user", "content": 5}]}, {"messages": [], "stream": "yes"}],
)
def test_chat_request_rejects_wrong_shapes(doc: dict) -> None:
    with pytest.raises(BadRequest):
        chat_request(doc)


def test_generate_uses_the_chat_template_unless_raw() -> None:
    path, body, _ = generate_request({"prompt": "Why?", "system": "Be brief", "stream": False})
    assert path == "/v1/chat/completions"
    assert body["messages"] == [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Why?"}]
    path, body, _ = generate_request({"prompt": "Once upon", "raw": True, "options": {"num_predict": 3}})
    assert path == "/v1/completions"
    assert body["prompt"] == "Once upon" and body["max_tokens"] == 3 and body["stream"] is True
    with pytest.raises(BadRequest):
        generate_request({"prompt": 12})


def test_done_fields_come_from_engine_timings() -> None:
    fields = done_fields("length", {"prompt_n": 11, "prompt_ms": 2.5, "predicted_n": 7, "predicted_ms": 40.0},
                        None, started=0.0, load_duration=0.25)
    assert fields["done"] is True and fields["done_reason"] == "length"
    assert fields["prompt_eval_count"] == 11 and fields["prompt_eval_duration"] == 2_500_000
    assert fields["eval_count"] == 7 and fields["eval_duration"] == 40_000_000
    assert fields["load_duration"] == 250_000_000


def test_sse_parser_handles_split_events_and_done() -> None:
    raw = b'data: {"a": 1}\n\ndata: {"a"' + b': 2}\n\n: comment\n\ndata: [DONE]\n\ndata: {"a": 3}\n\n'
    pieces = [raw[i : i + 5] for i in range(0, len(raw), 5)]
    assert [e["a"] for e in sse_events(pieces)] == [1, 2]


def test_api_key_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "dxhome" / "api_key"
    key = load_or_create_api_key(path)
    assert key.startswith("dx-") and len(key) > 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_api_key(path) == key
    os.chmod(path, 0o644)
    assert load_or_create_api_key(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


def _headers(**fields: str) -> Headers:
    return Headers([(k.replace("_", "-"), v) for k, v in fields.items()])


def test_bearer_check() -> None:
    assert key_matches(_headers(Authorization="Bearer k1"), "k1")
    assert key_matches(_headers(Authorization="bearer  k1 "), "k1")
    assert not key_matches(_headers(Authorization="Bearer k2"), "k1")
    assert not key_matches(_headers(Authorization="Basic k1"), "k1")  # Basic carries base64(user:key)
    assert not key_matches(_headers(), "k1")
    assert not key_matches(_headers(Authorization=""), "k1")


def test_bind_policy() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::")
    check_bind_policy("127.0.0.1", auth_enabled=False)
    check_bind_policy("0.0.0.0", auth_enabled=True)
    with pytest.raises(ConfigurationError, match="without an API key"):
        check_bind_policy("0.0.0.0", auth_enabled=False)


def _fake_engine(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_engine_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    monkeypatch.setenv("PATH", str(tmp_path / "pathbin"))
    monkeypatch.setenv("DX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DX_ENGINE", raising=False)
    with pytest.raises(ConfigurationError, match="no llama-server engine found"):
        locate_engine()
    on_path = _fake_engine(tmp_path / "pathbin" / "llama-server")
    assert locate_engine() == on_path
    arch = platform.machine().lower().replace("amd64", "x86_64")
    old = _fake_engine(tmp_path / "cache" / "engines" / f"cpu-linux-{arch}-aaaa" / "bin" / "llama-server")
    new = _fake_engine(tmp_path / "cache" / "engines" / f"cpu-linux-{arch}-bbbb" / "bin" / "llama-server")
    (old.parent.parent / "engine.json").write_text("{}")
    os.utime(old.parent.parent / "engine.json", (1, 1))
    assert locate_engine() == old  # an entry without engine.json is unfinished: ignored
    (new.parent.parent / "engine.json").write_text("{}")
    assert locate_engine() == new
    explicit = _fake_engine(tmp_path / "mine" / "bin" / "llama-server")
    monkeypatch.setenv("DX_ENGINE", str(tmp_path / "mine"))
    assert locate_engine() == explicit
    monkeypatch.setenv("DX_ENGINE", str(tmp_path / "nothing-here"))
    with pytest.raises(ConfigurationError, match="DX_ENGINE"):
        locate_engine()


def test_route_table_says_who_answers_and_what_is_public() -> None:
    from dx.server import ollama as ollama_routes
    from dx.server import ollama_blobs, ollama_models, routes
    from dx.server import openai as openai_routes

    assert routes.resolve("POST", "/api/chat") == (ollama_routes.chat, False)
    assert routes.resolve("HEAD", "/api/tags") == (ollama_models.tags, False)  # GET routes answer HEAD
    assert routes.resolve("DELETE", "/api/delete") == (ollama_models.delete, False)
    assert routes.resolve("POST", "/v1/embeddings") == (openai_routes.relay, False)
    assert {r.path for r in routes.ROUTES if r.public} == {"/health", "/", "/api/version"}  # as Ollama's
    assert routes.resolve("HEAD", "/api/blobs/sha256:00") == (ollama_blobs.head, False)
    assert routes.resolve("POST", "/api/blobs/sha256:00")[0] not in (ollama_blobs.head, openai_routes.passthrough)
    assert routes.resolve("POST", "/v1/messages") == (openai_routes.relay, False)  # by the body's model
    assert routes.resolve("POST", "/v1/messages/count_tokens") == (openai_routes.relay, False)
    # everything else goes to the engine: public only for GET/HEAD outside the APIs (the web UI's assets)
    assert routes.resolve("GET", "/bundle.js") == (openai_routes.passthrough, True)
    assert routes.resolve("POST", "/tokenize") == (openai_routes.passthrough, False)
    assert routes.resolve("GET", "/v1/other") == (openai_routes.passthrough, False)
    handler, public = routes.resolve("GET", "/api/nothing")
    assert not public and handler not in (openai_routes.passthrough,)


def test_request_heads_are_parsed_strictly() -> None:
    from dx.server.wire import WireError, parse_head

    head = parse_head(b"POST /api/chat?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nX-A:  v \r\nx-a: w")
    assert (head.method, head.target, head.body_length, head.keep_alive) == ("POST", "/api/chat?x=1", 12, True)
    assert head.headers.get("x-A") == "v" and head.headers.get_all("X-A") == ["v", "w"]
    assert parse_head(b"GET / HTTP/1.0").keep_alive is False  # HTTP/1.0 without Host is allowed
    assert parse_head(b"GET / HTTP/1.0\nConnection: keep-alive").keep_alive is True  # bare LF lines too
    assert parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close").keep_alive is False
    for bad, status in [
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 007a", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked", 411),
        (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb", 400),
        (b"GET http://a/ HTTP/1.1\r\nHost: a", 400),
        (b"G(T / HTTP/1.1\r\nHost: a", 400),
    ]:
        with pytest.raises(WireError) as exc:
            parse_head(bad)
        assert exc.value.status == status, bad


def test_host_policy_by_bind_address(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from dx.server.site import HostPolicy

    monkeypatch.setattr(socket, "gethostname", lambda: "Box.lan")
    local = HostPolicy("127.0.0.1")
    assert all(local.allows(h) for h in ("localhost", "127.0.0.1", "127.9.9.9", "::1", "ui.localhost"))
    assert not any(local.allows(h) for h in ("attacker.example", "192.168.1.5", "box", "localhost.evil"))
    public = HostPolicy("0.0.0.0")  # every interface: any IP literal and the machine's own name
    assert all(public.allows(h) for h in ("192.168.1.5", "2001:db8::1", "box.lan", "box", "localhost"))
    assert not public.allows("attacker.example")
    assert HostPolicy("192.168.1.5").allows("192.168.1.5") and not HostPolicy("192.168.1.5").allows("10.0.0.1")
    listed = HostPolicy("::1", ["dx.example", "*.corp.example"])
    assert listed.allows("dx.example") and listed.allows("a.b.corp.example") and not listed.allows("corp.example")
    assert HostPolicy("127.0.0.1", ["*"]).allows("anything.example")
    for bad in ("http://x", "x:80", "a/b"):
        with pytest.raises(ConfigurationError, match="--allowed-hosts"):
            HostPolicy("127.0.0.1", [bad])


def test_origin_policy_and_same_origin() -> None:
    from dx.server.site import OriginPolicy, same_origin

    policy = OriginPolicy(["http://localhost:3000", "HTTPS://App.Example:443/"])
    assert policy.listed("http://localhost:3000") and policy.listed("https://app.example")
    assert not policy.listed("http://localhost:3001") and not policy.listed("http://app.example")
    assert not policy.listed("null")
    for bad in ("*", "null", "localhost:3000", "ftp://x", "http://x/path"):
        with pytest.raises(ConfigurationError, match="--allow-origins"):
            OriginPolicy([bad])
    assert same_origin("http://127.0.0.1:11434", "127.0.0.1:11434")
    assert same_origin("http://example.com", "example.com:80") and same_origin("https://example.com", "EXAMPLE.com")
    assert not same_origin("http://127.0.0.1:11435", "127.0.0.1:11434")
    assert not same_origin("null", "127.0.0.1:11434")
