"""litellm against the minted executable, auth on: ``ollama_chat/`` (Ollama's /api/chat, tools in
Ollama's shape) and ``openai/`` (the /v1 API), both with ``api_key``."""

from __future__ import annotations

import json

import litellm
import pytest
from support.minted_server import MODEL, MintedServer

pytestmark = pytest.mark.integration

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                       "required": ["city"]},
    },
}
WEATHER = [{"role": "user", "content": "What is the weather like in Paris right now? Use the get_weather tool."}]


def test_litellm_ollama_chat(dx: MintedServer) -> None:
    r = litellm.completion(model=f"ollama_chat/{MODEL}", api_base=dx.url, api_key=dx.api_key, timeout=300,
                           messages=[{"role": "user", "content": "Say hello."}], max_tokens=12, temperature=0, seed=7)
    assert r.choices[0].message.content.strip(), r
    assert r.usage.completion_tokens > 0


def test_litellm_ollama_chat_stream(dx: MintedServer) -> None:
    stream = litellm.completion(model=f"ollama_chat/{MODEL}", api_base=dx.url, api_key=dx.api_key, timeout=300,
                                messages=[{"role": "user", "content": "Count from one to five."}], max_tokens=16,
                                temperature=0, seed=7, stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2, pieces


def test_litellm_ollama_chat_with_tools(dx: MintedServer) -> None:
    r = litellm.completion(model=f"ollama_chat/{MODEL}", api_base=dx.url, api_key=dx.api_key, timeout=300,
                           messages=WEATHER, tools=[WEATHER_TOOL], max_tokens=96, temperature=0, seed=7)
    calls = r.choices[0].message.tool_calls
    assert calls, f"no tool call: {r.choices[0].message.content!r}"
    assert calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments).get("city"), str), calls[0]


def test_litellm_openai_route_with_tools(dx: MintedServer) -> None:
    r = litellm.completion(model=f"openai/{MODEL}", api_base=f"{dx.url}/v1", api_key=dx.api_key, timeout=300,
                           messages=WEATHER, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=96,
                           temperature=0, seed=7)
    calls = r.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather", r
    assert isinstance(json.loads(calls[0].function.arguments).get("city"), str), calls[0]


def test_litellm_openai_route_chat_and_embedding(dx: MintedServer) -> None:
    r = litellm.completion(model=f"openai/{MODEL}", api_base=f"{dx.url}/v1", api_key=dx.api_key, timeout=300,
                           messages=[{"role": "user", "content": "Say hello."}], max_tokens=12, temperature=0)
    assert r.choices[0].message.content.strip(), r
    e = litellm.embedding(model=f"openai/{MODEL}", api_base=f"{dx.url}/v1", api_key=dx.api_key, timeout=300,
                          input=["the cat sat"])
    assert len(e.data[0]["embedding"]) == 576


def test_litellm_model_info_follow_up_carries_the_key(dx: MintedServer) -> None:
    """litellm asks /api/show for the context length, with the key it was given (a refusal is silent)."""
    from litellm.llms.ollama.common_utils import OllamaModelInfo

    info = OllamaModelInfo().get_model_info(f"ollama_chat/{MODEL}", api_base=dx.url, api_key=dx.api_key)
    assert info and info["max_tokens"] == 8192, info  # /api/show answered (model_info's context_length)
