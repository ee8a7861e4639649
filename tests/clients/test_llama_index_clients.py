"""llama-index's Ollama LLM and OllamaEmbedding against the minted executable, auth on (Bearer header).

The LLM asks ``/api/show`` for the model's ``<arch>.context_length`` when no context window is given,
and sends ``format: ""`` on every chat: both must work.
"""

from __future__ import annotations

import math

import pytest
from llama_index.core.llms import ChatMessage
from llama_index.core.tools import FunctionTool
from llama_index.embeddings.ollama import OllamaEmbedding
from llama_index.llms.ollama import Ollama
from support.minted_server import GREEDY, MODEL, MintedServer

pytestmark = pytest.mark.integration

SMOLLM2_EMBEDDING_LENGTH = 576


def llm(dx: MintedServer, **kw: object) -> Ollama:
    return Ollama(model=MODEL, base_url=dx.url, headers=dx.headers, request_timeout=300,
                  additional_kwargs={**GREEDY, "num_predict": 16}, **kw)


def test_llama_index_reads_the_context_window_from_show(dx: MintedServer) -> None:
    assert llm(dx).metadata.context_window == 8192  # SmolLM2's llama.context_length, via model_info


def test_llama_index_complete(dx: MintedServer) -> None:
    answer = llm(dx, context_window=2048).complete("The capital of France is")
    assert answer.text.strip(), answer


def test_llama_index_chat_and_stream(dx: MintedServer) -> None:
    model = llm(dx, context_window=2048)
    answer = model.chat([ChatMessage(role="user", content="Say hello.")])
    assert answer.message.role == "assistant" and answer.message.content.strip(), answer
    deltas = [r.delta for r in model.stream_chat([ChatMessage(role="user", content="Count from one to five.")])]
    assert len([d for d in deltas if d]) >= 2, deltas


def test_llama_index_json_mode(dx: MintedServer) -> None:
    import json

    answer = llm(dx, context_window=2048, json_mode=True).complete("Give a JSON object with a key 'city'.")
    assert isinstance(json.loads(answer.text), dict), answer.text


def test_llama_index_chat_with_tools(dx: MintedServer) -> None:
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"It is sunny in {city}."

    tool = FunctionTool.from_defaults(fn=get_weather)
    model = Ollama(model=MODEL, base_url=dx.url, headers=dx.headers, request_timeout=300, context_window=2048,
                   additional_kwargs={**GREEDY, "num_predict": 96})
    answer = model.chat_with_tools([tool], user_msg="What is the weather like in Paris right now? "
                                                    "Use the get_weather tool.")
    calls = model.get_tool_calls_from_response(answer, error_on_no_tool_call=False)
    assert calls and calls[0].tool_name == "get_weather", answer
    assert isinstance(calls[0].tool_kwargs.get("city"), str), calls[0]


def test_llama_index_embeddings(dx: MintedServer) -> None:
    emb = OllamaEmbedding(model_name=MODEL, base_url=dx.url, client_kwargs={"headers": dx.headers, "timeout": 300})
    one = emb.get_text_embedding("the cat sat on the mat")
    many = emb.get_text_embedding_batch(["the cat sat on the mat", "stock markets fell sharply"])
    query = emb.get_query_embedding("where did the cat sit?")
    assert len(one) == len(query) == SMOLLM2_EMBEDDING_LENGTH
    assert [len(v) for v in many] == [SMOLLM2_EMBEDDING_LENGTH] * 2
    assert math.isclose(sum(x * x for x in one), 1.0, rel_tol=1e-3)  # Ollama's /api/embed is L2-normalised
    assert many[0] != many[1]
