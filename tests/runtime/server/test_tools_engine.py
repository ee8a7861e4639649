"""Tools with a model whose template has none: the real `openai` and `ollama` clients against `dx serve`
(auth on) with the real engine and SmolLM2, whose template the engine reports without tool support
(``chat_template_caps``), so every call here goes through DX's generic format (dx.server.tool_calls).

One server for the module. Sampling is greedy with a seed, so each answer is the same every run.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from support.serve_harness import DXServer, engine_binary, serve_model

pytestmark = pytest.mark.integration

MODEL = "smollm2:135m"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}},
                       "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The current time"}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"temperature": 0, "seed": 7}


@pytest.fixture(scope="module")
def dx(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    engine = engine_binary(request)
    tmp = tmp_path_factory.mktemp("tools")
    server = serve_model(tmp, smollm2_gguf, MODEL, "--ctx", "2048", engine=engine)
    assert server.api_key  # auth on
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oai(dx: DXServer) -> openai.OpenAI:
    return dx.openai(timeout=300)


@pytest.fixture(scope="module")
def oll(dx: DXServer) -> ollama.Client:
    return dx.ollama(timeout=300)


def test_the_template_has_no_tool_support(dx: DXServer) -> None:
    """The premise: llama-server alone would drop the tools for this model."""
    caps = httpx.get(f"{dx.url}/props", headers=dx.headers, timeout=120).json()["chat_template_caps"]
    assert caps["supports_tools"] is False and caps["supports_tool_calls"] is False


# ------------------------------------------------------------------ openai
def test_openai_required_returns_a_parsed_call_and_the_tools_reached_the_model(oai: openai.OpenAI) -> None:
    plain = oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1, **GREEDY)  # type: ignore[arg-type]
    r = oai.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=80, **GREEDY,  # type: ignore[arg-type]
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)
    assert r.usage is not None and plain.usage is not None
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens + 40  # the tools' description is in the prompt


def test_openai_required_streamed(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=80, stream=True,
        stream_options={"include_usage": True}, **GREEDY,  # type: ignore[arg-type]
    )
    calls: dict[int, dict[str, str]] = {}
    finish, usage = None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for tc in choice.delta.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += tc.id or ""
                if tc.function is not None:
                    slot["name"] += tc.function.name or ""
                    slot["arguments"] += tc.function.arguments or ""
    assert finish == "tool_calls"
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert "city" in json.loads(calls[0]["arguments"])
    assert usage is not None and usage.completion_tokens > 0


def test_openai_named_function_is_the_one_called(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], max_tokens=60,
        tool_choice={"type": "function", "function": {"name": "get_time"}}, **GREEDY,  # type: ignore[arg-type]
    )
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_time"
    assert isinstance(json.loads(call.function.arguments), dict)


def test_openai_none_answers_in_text(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=8, **GREEDY,  # type: ignore[arg-type]
    )
    assert not r.choices[0].message.tool_calls
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")


def test_a_cut_answer_is_text_with_length_not_an_error(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=4, **GREEDY,  # type: ignore[arg-type]
    )
    assert r.choices[0].finish_reason == "length"
    assert not r.choices[0].message.tool_calls
    assert r.choices[0].message.content and r.choices[0].message.content.startswith("{")


def test_a_schema_the_engine_cannot_take_falls_back_to_free_arguments(oai: openai.OpenAI) -> None:
    """llama.cpp's json-schema-to-grammar refuses an unresolvable $ref (400): the call is still made."""
    odd = {"type": "function", "function": {"name": "lookup", "parameters": {"$ref": "#/$defs/missing"}}}
    r = oai.chat.completions.create(
        model=MODEL, messages=ASK, tools=[odd], tool_choice="required", max_tokens=60, **GREEDY,  # type: ignore[arg-type]
    )
    choice = r.choices[0]
    if choice.finish_reason == "tool_calls":
        assert choice.message.tool_calls[0].function.name == "lookup"  # type: ignore[index]
    else:  # free arguments let this small model nest objects until max_tokens: still the constrained format
        assert choice.finish_reason == "length"
        compact = "".join((choice.message.content or "").split())
        assert compact.startswith('{"tool_calls":[{"name":"lookup","arguments":{')


# ------------------------------------------------------------------ ollama
def test_ollama_tool_call_and_second_round(oll: ollama.Client) -> None:
    """Under "auto" SmolLM2 chooses the tool for this prompt, then answers from the tool's result."""
    r = oll.chat(model=MODEL, messages=ASK, tools=[WEATHER], options={**GREEDY, "num_predict": 80})
    calls = r.message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments, dict) and calls[0].function.arguments.get("city") == "Paris"
    assert r.done_reason == "stop"

    history = [*ASK, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": calls[0].function.arguments}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "18 degrees Celsius and sunny"}]
    r2 = oll.chat(model=MODEL, messages=history, tools=[WEATHER], options={**GREEDY, "num_predict": 80})
    assert not r2.message.tool_calls
    assert "18" in r2.message.content


def test_ollama_tool_call_streamed(oll: ollama.Client) -> None:
    chunks = list(oll.chat(model=MODEL, messages=ASK, tools=[WEATHER], stream=True,
                           options={**GREEDY, "num_predict": 80}))
    *body, final = chunks
    assert final.done and final.done_reason == "stop" and final.eval_count
    with_calls = [c for c in body if c.message.tool_calls]
    assert len(with_calls) == 1 and not with_calls[0].done
    call = with_calls[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)


# ------------------------------------------------------------------ bad requests
def test_bad_tools_are_400_in_each_apis_shape(dx: DXServer) -> None:
    bad = [{"type": "function", "function": {"description": "no name"}}]
    r = httpx.post(f"{dx.url}/v1/chat/completions", headers=dx.headers, timeout=60,
                   json={"model": MODEL, "messages": ASK, "tools": bad})
    assert r.status_code == 400
    assert "tools[0].function.name" in r.json()["error"]["message"]
    r = httpx.post(f"{dx.url}/v1/chat/completions", headers=dx.headers, timeout=60,
                   json={"model": MODEL, "messages": ASK, "tools": [WEATHER], "tool_choice": "any"})
    assert r.status_code == 400 and "tool_choice" in r.json()["error"]["message"]
    r = httpx.post(f"{dx.url}/api/chat", headers=dx.headers, timeout=60,
                   json={"model": MODEL, "messages": ASK, "tools": bad})
    assert r.status_code == 400
    assert "tools[0].function.name" in r.json()["error"]
