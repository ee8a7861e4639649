"""Anthropic's Messages API with tools on a model without template tool support (``dx.server.anthropic_tools``):
the pure translations both ways and the synthesized SSE events, then the real ``anthropic`` SDK against
``dx serve`` with the real engine and SmolLM2 (whose template has no tools)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.serve_harness import DXServer, engine_binary, serve_model

from dx.errors import BadRequest
from dx.server import anthropic_tools as at
from dx.server import tool_calls

WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


# ------------------------------------------------------------------ request
def test_request_translates_to_openai_chat() -> None:
    doc = {
        "model": "m", "max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "stop_sequences": ["END"],
        "system": [{"type": "text", "text": "Be brief."}],
        "tools": [WEATHER], "tool_choice": {"type": "any"},
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                              {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                               "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                          "content": [{"type": "text", "text": "18C"}]},
                                         {"type": "text", "text": "And tomorrow?"}]},
        ],
    }
    out = at.to_openai(doc)
    assert out["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert out["tools"] == [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"],
                                                              "description": "Weather in a city"}}]
    assert out["tool_choice"] == "required"
    assert (out["max_tokens"], out["temperature"], out["top_p"], out["stop"]) == (64, 0.2, 0.9, ["END"])
    # the generic path takes it as it is
    tools = tool_calls.check_tools(out["tools"])
    assert tool_calls.check_tool_choice(out["tool_choice"], tools) == tool_calls.Choice("required")


@pytest.mark.parametrize(("choice", "want"), [
    ({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choice(choice: dict, want: object) -> None:
    doc = {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER], "tool_choice": choice}
    assert at.to_openai(doc)["tool_choice"] == want


@pytest.mark.parametrize("doc", [
    {"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER], "tool_choice": {"type": "sometimes"}},
    {"messages": [{"role": "user", "content": "x"}], "tools": [{"name": "f"}]},
    {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305", "name": "w"}]},
    {"messages": [{"role": "system", "content": "x"}], "tools": [WEATHER]},
    {"messages": [{"role": "user", "content": [{"type": "tool_result"}]}], "tools": [WEATHER]},
    {"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER], "stop_sequences": "END"},
])
def test_bad_request_is_400(doc: dict) -> None:
    with pytest.raises(BadRequest):
        at.to_openai(doc)


def test_error_tool_result_says_so() -> None:
    doc = {"tools": [WEATHER], "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "no such city", "is_error": True}]}]}
    assert at.to_openai(doc)["messages"] == [{"role": "tool", "tool_call_id": "t", "content": "Error: no such city"}]


# ------------------------------------------------------------------ answer
ENGINE = {"id": "chatcmpl-1", "model": "smollm2", "usage": {"prompt_tokens": 50, "completion_tokens": 12}}


def test_tool_call_answer() -> None:
    parsed = tool_calls.parse_answer('{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}',
                                     "stop")
    msg = at.message(ENGINE, parsed, "smollm2:135m")
    assert msg["id"].startswith("msg_") and msg["type"] == "message" and msg["role"] == "assistant"
    assert msg["model"] == "smollm2:135m"
    [block] = msg["content"]
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
    assert (block["name"], block["input"]) == ("get_weather", {"city": "Paris"})
    assert (msg["stop_reason"], msg["stop_sequence"]) == ("tool_use", None)
    assert msg["usage"] == {"input_tokens": 50, "output_tokens": 12}


@pytest.mark.parametrize(("finish", "reason"), [("stop", "end_turn"), ("length", "max_tokens")])
def test_text_answer(finish: str, reason: str) -> None:
    msg = at.message(ENGINE, tool_calls.parse_answer('{"response": "Hello"}', finish), "m")
    assert msg["content"] == [{"type": "text", "text": "Hello"}]
    assert msg["stop_reason"] == reason


def _events(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for chunk in raw.decode().split("\n\n"):
        if not chunk:
            continue
        name_line, data_line = chunk.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        data = json.loads(data_line[6:])
        assert data["type"] == name_line[7:]
        out.append((name_line[7:], data))
    assert raw.endswith(b"\n\n")
    return out


def test_stream_events() -> None:
    parsed = tool_calls.Parsed("Sure.", [{"id": "call_x", "type": "function",
                                          "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}],
                               "tool_calls")
    msg = at.message(ENGINE, parsed, "m")
    events = _events(at.stream(msg))
    assert [e for e, _ in events] == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["input_tokens"] == 50
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert events[2][1]["delta"] == {"type": "text_delta", "text": "Sure."}
    assert events[4][1]["content_block"] == {"type": "tool_use", "id": "toolu_x", "name": "get_weather", "input": {}}
    delta = events[5][1]
    assert delta["index"] == 1 and delta["delta"]["type"] == "input_json_delta"
    assert json.loads(delta["delta"]["partial_json"]) == {"city": "Oslo"}
    assert events[7][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[7][1]["usage"] == {"output_tokens": 12}


# ------------------------------------------------------------------ the real SDK against dx serve
MODEL = "smollm2:135m"


@pytest.fixture(scope="module")
def dx(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    engine = engine_binary(request)
    tmp = tmp_path_factory.mktemp("anthropic-tools")
    server = serve_model(tmp, smollm2_gguf, MODEL, "--ctx", "2048", engine=engine)
    yield server
    server.stop()


def _ask() -> dict:
    return {"model": MODEL, "max_tokens": 64, "tools": [WEATHER], "tool_choice": {"type": "any"},
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}


@pytest.mark.integration
def test_sdk_tool_use(dx: DXServer) -> None:
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=dx.url, api_key=dx.api_key, max_retries=0, timeout=120)
    msg = client.messages.create(**_ask())
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather" and uses[0].id.startswith("toolu_")
    assert isinstance(uses[0].input["city"], str)
    assert msg.stop_reason == "tool_use"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0

    with client.messages.stream(**_ask()) as stream:
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather" and isinstance(uses[0].input["city"], str)
    assert final.stop_reason == "tool_use"


@pytest.mark.integration
def test_sdk_tool_result_round_and_bad_choice(dx: DXServer) -> None:
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=dx.url, api_key=dx.api_key, max_retries=0, timeout=120)
    ask = _ask()
    ask["tool_choice"] = {"type": "auto"}
    ask["messages"] += [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C, sunny"}]},
    ]
    msg = client.messages.create(**ask)
    assert msg.content and msg.stop_reason in ("tool_use", "end_turn", "max_tokens")

    bad = _ask()
    bad["tool_choice"] = {"type": "tool", "name": "no_such_tool"}
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(**bad)
    assert err.value.status_code == 400 and "no_such_tool" in str(err.value)
