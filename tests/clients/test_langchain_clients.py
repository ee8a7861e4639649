"""LangChain's Ollama and OpenAI chat models against the minted executable, auth on.

ChatOllama takes the key the way LangChain documents it, in the URL (``http://user:KEY@host``), which
it sends as HTTP Basic; ChatOpenAI sends it as ``Authorization: Bearer``.
"""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI
from pydantic import BaseModel
from support.minted_server import GREEDY, MODEL, MintedServer

pytestmark = pytest.mark.integration


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny in {city}."


WEATHER_PROMPT = "What is the weather like in Paris right now? Use the get_weather tool."


class Person(BaseModel):
    name: str
    age: int


def chat_ollama(dx: MintedServer, key: str | None = None, **kw: object) -> ChatOllama:
    host = dx.url.removeprefix("http://")
    return ChatOllama(model=MODEL, base_url=f"http://user:{key or dx.api_key}@{host}", **GREEDY, **kw)


def test_chat_ollama_invoke_with_the_key_in_the_url(dx: MintedServer) -> None:
    answer = chat_ollama(dx, num_predict=16).invoke("Say hello in one short sentence.")
    assert isinstance(answer, AIMessage) and answer.content.strip(), answer
    assert answer.response_metadata["model"].startswith(MODEL), answer.response_metadata
    assert answer.usage_metadata and 0 < answer.usage_metadata["output_tokens"] <= 16


def test_chat_ollama_with_a_wrong_key_is_refused(dx: MintedServer) -> None:
    with pytest.raises(Exception) as err:  # ollama.ResponseError, raised through LangChain
        chat_ollama(dx, key="not-the-key", num_predict=4).invoke("Hi")
    assert getattr(err.value, "status_code", None) == 401, repr(err.value)


def test_chat_ollama_stream(dx: MintedServer) -> None:
    chunks = [c.content for c in chat_ollama(dx, num_predict=16).stream("Count from one to five.")]
    assert len([c for c in chunks if c]) >= 2, chunks  # token by token, not one blob
    assert "".join(chunks).strip()


def test_chat_ollama_structured_output_json_schema(dx: MintedServer) -> None:
    llm = chat_ollama(dx, num_predict=64).with_structured_output(Person, method="json_schema")
    person = llm.invoke("John Smith is 42 years old. Give his name and age.")
    assert isinstance(person, Person), person  # the schema reached the engine's grammar


def test_chat_ollama_bind_tools_gets_a_parsed_tool_call(dx: MintedServer) -> None:
    answer = chat_ollama(dx, num_predict=96).bind_tools([get_weather]).invoke(WEATHER_PROMPT)
    assert answer.tool_calls, f"no tool call: {answer.content!r}"
    call = answer.tool_calls[0]
    assert call["name"] == "get_weather", call
    assert isinstance(call["args"].get("city"), str) and call["args"]["city"], call


def test_chat_ollama_tool_round_trip(dx: MintedServer) -> None:
    """The tool's result goes back as a tool message (Ollama's ``tool_name``) and the model answers."""
    llm = chat_ollama(dx, num_predict=64).bind_tools([get_weather])
    history: list = [("human", WEATHER_PROMPT)]
    first = llm.invoke(history)
    assert first.tool_calls, first.content
    history += [first, get_weather.invoke(first.tool_calls[0])]
    final = llm.invoke(history)
    assert isinstance(final, AIMessage) and (final.content or final.tool_calls), final


def chat_openai(dx: MintedServer, **kw: object) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=f"{dx.url}/v1", api_key=dx.api_key, max_retries=0, timeout=300,
                      temperature=0, seed=7, **kw)


def test_chat_openai_bind_tools_any_returns_tool_calls(dx: MintedServer) -> None:
    answer = chat_openai(dx, max_tokens=96).bind_tools([get_weather], tool_choice="any").invoke(WEATHER_PROMPT)
    assert answer.tool_calls, f"tool_choice=any gave no tool call: {answer.content!r}"
    call = answer.tool_calls[0]
    assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str), call
    assert answer.response_metadata.get("finish_reason") == "tool_calls", answer.response_metadata


def test_chat_openai_streams_tool_call_deltas(dx: MintedServer) -> None:
    llm = chat_openai(dx, max_tokens=96).bind_tools([get_weather], tool_choice="any")
    merged = None
    for chunk in llm.stream(WEATHER_PROMPT):
        merged = chunk if merged is None else merged + chunk
    assert merged is not None and merged.tool_calls, merged
    assert merged.tool_calls[0]["name"] == "get_weather", merged.tool_calls


def test_chat_openai_tool_choice_none_answers_in_text(dx: MintedServer) -> None:
    answer = chat_openai(dx, max_tokens=24).bind_tools([get_weather], tool_choice="none").invoke(WEATHER_PROMPT)
    assert not answer.tool_calls and answer.content.strip(), answer


def test_chat_openai_structured_output(dx: MintedServer) -> None:
    person = chat_openai(dx, max_tokens=64).with_structured_output(Person, method="json_schema").invoke(
        "John Smith is 42 years old. Give his name and age.")
    assert isinstance(person, Person), person
