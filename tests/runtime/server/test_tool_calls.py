"""DX's generic tool-call format (dx.server.tool_calls) and the tools mapping of /api/chat: pure units, no engine.

The native path's answers below are the shapes llama-server sends for a template with tool
support (tools/server/server-common.cpp and server-task.cpp in the pinned source):
``message.tool_calls[]`` with ``function.arguments`` as JSON text, and streamed
``delta.tool_calls`` pieces keyed by ``index``.
"""

from __future__ import annotations

import http.client
import io
import json
import time

import pytest

from dx.errors import BadRequest
from dx.server import tool_calls as tc
from dx.server.ollama_wire import chat_request, tool_calls_to_ollama

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}
TOOLS = tc.check_tools([WEATHER, TIME])


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(("tools", "words"), [
    ({"type": "function"}, "tools must be a list"),
    (["get_weather"], "tools[0] must be an object"),
    ([{"type": "retrieval", "function": {"name": "x"}}], 'tools[0].type must be "function"'),
    ([{"type": "function"}], "tools[0].function must be an object"),
    ([{"type": "function", "function": {"name": ""}}], "function.name must be a non-empty string"),
    ([{"type": "function", "function": {"name": 3}}], "function.name must be a non-empty string"),
    ([{"type": "function", "function": {"name": "f", "parameters": "x"}}], "parameters must be a JSON schema object"),
    ([{"type": "function", "function": {"name": "f", "description": 1}}], "description must be a string"),
    ([TIME, TIME], "is given twice"),
])
def test_bad_tools_are_the_clients_mistake(tools: object, words: str) -> None:
    with pytest.raises(BadRequest) as exc:
        tc.check_tools(tools)
    assert words in str(exc.value)
    assert exc.value.http_status == 400


def test_tools_normalised_a_tool_without_parameters_takes_an_empty_object() -> None:
    assert TOOLS[1]["function"] == {"name": "get_time", "parameters": {"type": "object", "properties": {}}}
    assert TOOLS[0]["function"]["description"] == "Get the current weather in a city"
    assert tc.check_tools(None) == []


@pytest.mark.parametrize(("choice", "expected"), [
    (None, tc.Choice("auto")),
    ("auto", tc.Choice("auto")),
    ("none", tc.Choice("none")),
    ("required", tc.Choice("required")),
    ({"type": "function", "function": {"name": "get_time"}}, tc.Choice("required", "get_time")),
])
def test_tool_choice_variants(choice: object, expected: tc.Choice) -> None:
    assert tc.check_tool_choice(choice, TOOLS) == expected


@pytest.mark.parametrize(("choice", "words"), [
    ("any", "tool_choice must be"),
    (3, "tool_choice must be"),
    ({"type": "function", "function": {"name": "nope"}}, "not in tools"),
    ({"type": "function"}, "tool_choice must be"),
])
def test_bad_tool_choice(choice: object, words: str) -> None:
    with pytest.raises(BadRequest) as exc:
        tc.check_tool_choice(choice, TOOLS)
    assert words in str(exc.value)


def test_required_without_tools_is_refused() -> None:
    with pytest.raises(BadRequest, match="needs tools"):
        tc.check_tool_choice("required", [])


# ------------------------------------------------------------------ schema
def test_auto_schema_allows_calls_or_a_reply() -> None:
    schema = tc.answer_schema(TOOLS, tc.Choice("auto"))
    calls, reply = schema["anyOf"]
    assert reply == {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"]}
    items = calls["properties"]["tool_calls"]["items"]["anyOf"]
    assert [i["properties"]["name"]["const"] for i in items] == ["get_weather", "get_time"]
    assert items[0]["properties"]["arguments"] == WEATHER["function"]["parameters"]
    assert calls["properties"]["tool_calls"]["minItems"] == 1
    assert calls["properties"]["tool_calls"]["maxItems"] == 1  # one call unless parallel_tool_calls


def test_parallel_tool_calls_lifts_the_one_call_limit() -> None:
    out = tc.rewrite(_body(parallel_tool_calls=True), TOOLS, tc.Choice("required"))
    assert "maxItems" not in out["response_format"]["json_schema"]["schema"]["properties"]["tool_calls"]
    assert "parallel_tool_calls" not in out


def test_required_schema_has_only_calls() -> None:
    schema = tc.answer_schema(TOOLS, tc.Choice("required"))
    assert "anyOf" not in schema and schema["required"] == ["tool_calls"]


def test_named_function_fixes_the_name() -> None:
    schema = tc.answer_schema(TOOLS, tc.Choice("required", "get_weather"))
    item = schema["properties"]["tool_calls"]["items"]
    assert item["properties"]["name"] == {"type": "string", "const": "get_weather"}


def test_free_arguments_fallback() -> None:
    schema = tc.answer_schema(TOOLS, tc.Choice("required", "get_weather"), free_arguments=True)
    assert schema["properties"]["tool_calls"]["items"]["properties"]["arguments"] == {"type": "object"}


# ------------------------------------------------------------------ request rewrite
def _body(**extra: object) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER, TIME],
            "stream": True, "stream_options": {"include_usage": True}, "temperature": 0, **extra}


def test_rewrite_puts_tools_in_a_system_message_and_constrains_the_answer() -> None:
    out = tc.rewrite(_body(tool_choice="required"), TOOLS, tc.Choice("required"))
    assert "tools" not in out and "tool_choice" not in out and "stream_options" not in out
    assert out["stream"] is False and out["temperature"] == 0
    system = out["messages"][0]
    assert system["role"] == "system" and '"get_weather"' in system["content"]
    assert '"tool_calls"' in system["content"]
    assert out["messages"][1] == {"role": "user", "content": "Weather in Paris?"}
    assert out["response_format"]["type"] == "json_schema"
    assert out["response_format"]["json_schema"]["schema"] == tc.answer_schema(TOOLS, tc.Choice("required"))


def test_rewrite_merges_into_an_existing_system_message() -> None:
    body = _body()
    body["messages"].insert(0, {"role": "system", "content": "You are terse."})
    out = tc.rewrite(body, TOOLS, tc.Choice("auto"))
    assert [m["role"] for m in out["messages"]] == ["system", "user"]
    assert out["messages"][0]["content"].startswith("You are terse.\n\nYou can call the following tools")


def test_rewrite_named_lists_only_that_tool() -> None:
    out = tc.rewrite(_body(), TOOLS, tc.Choice("required", "get_time"))
    assert '"get_time"' in out["messages"][0]["content"] and "get_weather" not in out["messages"][0]["content"]


def test_rewrite_none_sends_no_tools_and_no_schema() -> None:
    out = tc.rewrite(_body(tool_choice="none"), TOOLS, tc.Choice("none"))
    assert out["messages"] == [{"role": "user", "content": "Weather in Paris?"}]
    assert "response_format" not in out and "tools" not in out


def test_rewrite_keeps_the_clients_json_schema_for_the_reply() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    out = tc.rewrite(_body(response_format={"type": "json_schema", "json_schema": {"schema": schema}}), TOOLS,
                     tc.Choice("auto"))
    assert out["response_format"]["json_schema"]["schema"]["anyOf"][1]["properties"]["response"] == schema


@pytest.mark.parametrize("messages", [None, "hi", ["hi"], {"role": "user"}])
def test_rewrite_refuses_messages_that_are_not_a_list_of_objects(messages: object) -> None:
    with pytest.raises(BadRequest, match="messages must be a list"):
        tc.rewrite(_body(messages=messages), TOOLS, tc.Choice("auto"))


def test_odd_tool_calls_in_history_do_not_break_the_rendering() -> None:
    out = tc.render_history([{"role": "assistant", "content": "", "tool_calls": 5},
                             {"role": "assistant", "content": "", "tool_calls": ["x", {"function": 3}]}])
    assert [json.loads(m["content"]) for m in out] == [{"tool_calls": []}, {"tool_calls": []}]


def test_a_grammar_with_tools_is_refused_as_llama_server_does() -> None:
    with pytest.raises(BadRequest, match="grammar"):
        tc.rewrite(_body(grammar="root ::= \"x\""), TOOLS, tc.Choice("auto"))


def test_rewrite_does_not_touch_the_request() -> None:
    body = _body()
    before = json.dumps(body, sort_keys=True)
    tc.rewrite(body, TOOLS, tc.Choice("auto"))
    assert json.dumps(body, sort_keys=True) == before


# ------------------------------------------------------------------ history
HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
]


def test_history_becomes_text_a_plain_template_carries() -> None:
    out = tc.render_history(HISTORY)
    assert out[0] == HISTORY[0]
    assert out[1]["role"] == "assistant"
    assert json.loads(out[1]["content"]) == {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    assert out[2]["role"] == "user"
    assert json.loads(out[2]["content"]) == {
        "tool_response": {"tool": "get_weather", "content": "18 C, sunny"}}  # no random id for the model to copy
    assert all("tool_calls" not in m and "tool_call_id" not in m for m in out)


def test_ollama_tool_message_is_named_by_tool_name() -> None:
    body, _ = chat_request({"model": "m", "tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "18 C"},
    ]})
    assert body["tools"] == [WEATHER]
    assert body["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    assert body["messages"][2]["name"] == "get_weather"
    out = tc.render_history(body["messages"])
    assert json.loads(out[2]["content"])["tool_response"]["tool"] == "get_weather"
    assert json.loads(out[1]["content"])["tool_calls"][0]["arguments"] == {"city": "Paris"}


def test_plain_assistant_replies_follow_the_format_only_while_tools_are_on() -> None:
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]
    assert json.loads(tc.render_history(msgs)[1]["content"]) == {"response": "Hello!"}
    assert tc.render_history(msgs, json_answers=False)[1]["content"] == "Hello!"


def test_bad_tools_on_api_chat_are_a_400() -> None:
    with pytest.raises(BadRequest, match=r"tools\[0\]\.function must be an object"):
        chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]})


# ------------------------------------------------------------------ answers
def test_parse_calls() -> None:
    parsed = tc.parse_answer('{\n "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}', "stop")
    assert parsed.content is None and parsed.finish_reason == "tool_calls"
    (call,) = parsed.calls
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_parse_reply() -> None:
    parsed = tc.parse_answer('{"response": "Hello there"}', "stop")
    assert (parsed.content, parsed.calls, parsed.finish_reason) == ("Hello there", [], "stop")


def test_parse_structured_reply_is_json_text() -> None:
    assert tc.parse_answer('{"response": {"a": 1}}', "stop").content == '{"a": 1}'


def test_parse_truncated_answer_is_text_with_length() -> None:
    text = '{\n  "tool_calls": [\n    {\n      "name": "get_wea'
    parsed = tc.parse_answer(text, "length")
    assert (parsed.content, parsed.calls, parsed.finish_reason) == (text, [], "length")


def test_parse_other_json_is_text() -> None:
    assert tc.parse_answer('{"x": 1}', "stop").content == '{"x": 1}'
    assert tc.parse_answer('{"tool_calls": [3]}', "stop").calls == []


def test_none_answer_is_never_parsed() -> None:
    answer = {"choices": [{"message": {"role": "assistant", "content": '{"response": "x"}'}, "finish_reason": "stop"}]}
    assert tc.read_answer(answer, tc.Choice("none")).content == '{"response": "x"}'
    assert tc.read_answer(answer, tc.Choice("auto")).content == "x"


ENGINE_ANSWER = {
    "id": "chatcmpl-abc", "object": "chat.completion", "created": 1700000000, "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'}}],
    "usage": {"prompt_tokens": 150, "completion_tokens": 30, "total_tokens": 180},
    "timings": {"prompt_n": 150, "predicted_n": 30},
}


def test_openai_answer_shape() -> None:
    parsed = tc.read_answer(ENGINE_ANSWER, tc.Choice("auto"))
    out = tc.openai_answer(ENGINE_ANSWER, parsed)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert isinstance(choice["message"]["tool_calls"][0]["function"]["arguments"], str)
    assert out["usage"] == ENGINE_ANSWER["usage"] and out["id"] == "chatcmpl-abc"


def _events(sse: bytes) -> list:
    blocks = [b for b in sse.decode().split("\n\n") if b]
    assert all(b.startswith("data: ") for b in blocks)
    return [b[6:] if b[6:] == "[DONE]" else json.loads(b[6:]) for b in blocks]


def test_stream_synthesis_of_calls() -> None:
    parsed = tc.read_answer(ENGINE_ANSWER, tc.Choice("auto"))
    events = _events(tc.openai_stream(ENGINE_ANSWER, parsed, include_usage=True))
    assert events[-1] == "[DONE]"
    role, head, args, finish, usage = events[:-1]
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == "chatcmpl-abc" for e in events[:-1])
    assert role["choices"][0]["delta"]["role"] == "assistant"
    call = head["choices"][0]["delta"]["tool_calls"][0]
    assert (call["index"], call["type"], call["function"]["name"]) == (0, "function", "get_weather")
    assert call["id"] == parsed.calls[0]["id"]
    assert json.loads(args["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert finish["choices"][0]["finish_reason"] == "tool_calls"
    assert usage["choices"] == [] and usage["usage"]["prompt_tokens"] == 150


def test_stream_synthesis_of_a_reply_without_usage() -> None:
    parsed = tc.parse_answer('{"response": "Hi"}', "stop")
    events = _events(tc.openai_stream(ENGINE_ANSWER, parsed, include_usage=False))
    assert [e if e == "[DONE]" else e["choices"][0]["delta"] for e in events] == [
        {"role": "assistant", "content": ""}, {"content": "Hi"}, {}, "[DONE]"]
    assert events[2]["choices"][0]["finish_reason"] == "stop"


def test_include_usage() -> None:
    assert tc.include_usage({"stream_options": {"include_usage": True}})
    assert not tc.include_usage({"stream": True})


# ------------------------------------------------------------------ native templates
def test_native_named_choice_becomes_required_with_that_tool() -> None:
    body = _body(tool_choice={"type": "function", "function": {"name": "get_time"}})
    out = tc.native_body(body, TOOLS, tc.check_tool_choice(body["tool_choice"], TOOLS))
    assert out is not None and out["tool_choice"] == "required"
    assert [t["function"]["name"] for t in out["tools"]] == ["get_time"]
    assert tc.native_body(_body(tool_choice="required"), TOOLS, tc.Choice("required")) is None


def test_native_engine_calls_in_ollama_shape() -> None:
    """llama-server's message.tool_calls (arguments as JSON text) -> Ollama's (an object)."""
    engine_calls = [{"type": "function", "id": "Xc3", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                    {"type": "function", "id": "Yq9", "function": {"name": "get_time", "arguments": "{}"}}]
    out = tool_calls_to_ollama(engine_calls)
    assert out[0] == {"id": "Xc3", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
    assert out[1]["function"]["arguments"] == {} and out[1]["function"]["index"] == 1


# A template with tool support, streamed: llama-server's SSE (server-task.cpp: the role first, then
# delta.tool_calls pieces by index, the name with the first piece, finish_reason "tool_calls", usage).
NATIVE_SSE = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in [
    {"choices": [{"index": 0, "finish_reason": None, "delta": {"role": "assistant", "content": None}}]},
    {"choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
        {"index": 0, "id": "Xc3", "type": "function", "function": {"name": "get_weather", "arguments": "{\"ci"}}]}}]},
    {"choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": "ty\": \"Paris\"}"}}]}}]},
    {"choices": [{"index": 0, "finish_reason": "tool_calls", "delta": {}}],
     "timings": {"prompt_n": 90, "prompt_ms": 10.0, "predicted_n": 12, "predicted_ms": 20.0}},
    {"choices": [], "usage": {"prompt_tokens": 90, "completion_tokens": 12, "total_tokens": 102}},
]) + b"data: [DONE]\n\n"


class _Socket:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.raw)


class _Client:
    """What ``_stream`` writes to: the client's side of the connection, kept in memory."""

    def __init__(self) -> None:
        self.wfile = io.BytesIO()
        self.status = 0
        self.connection = None  # no socket: the relay's hang-up watch is off

    def send_response(self, code: int) -> None:
        self.status = code

    def send_header(self, key: str, value: str) -> None:
        pass

    def end_headers(self) -> None:
        pass


def test_native_stream_sends_ollama_calls_in_a_chunk_before_the_final_one() -> None:
    from dx.server.ollama import _stream

    raw = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % len(NATIVE_SSE)
           + NATIVE_SSE)
    resp = http.client.HTTPResponse(_Socket(raw))  # type: ignore[arg-type]
    resp.begin()
    client = _Client()
    _stream(client, "m", resp, time.monotonic(), 0.0, "message")  # type: ignore[arg-type]
    body = client.wfile.getvalue()
    lines = []
    while body:  # the chunked framing
        size, _, rest = body.partition(b"\r\n")
        n = int(size, 16)
        if n:
            lines.append(json.loads(rest[:n]))
        body = rest[n + 2:]
    *_, calls, final = lines
    assert calls["done"] is False
    assert calls["message"]["tool_calls"] == [
        {"id": "Xc3", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert "tool_calls" not in final["message"]
    assert final["prompt_eval_count"] == 90 and final["eval_count"] == 12
