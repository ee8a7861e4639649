"""The ``anthropic`` SDK against the minted executable: ``Anthropic(api_key=KEY, base_url=…)`` sends the key
as ``x-api-key`` and talks to ``/v1/messages``."""

from __future__ import annotations

import anthropic
import pytest
from support.minted_server import MODEL, MintedServer

pytestmark = pytest.mark.integration


def client(dx: MintedServer, key: str | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=key or dx.api_key, base_url=dx.url, max_retries=0, timeout=300)


def test_anthropic_messages_create(dx: MintedServer) -> None:
    msg = client(dx).messages.create(model=MODEL, max_tokens=16,
                                     messages=[{"role": "user", "content": "Say hello."}])
    assert msg.role == "assistant" and msg.type == "message"
    assert msg.content and msg.content[0].type == "text" and msg.content[0].text.strip(), msg
    assert msg.stop_reason in ("end_turn", "max_tokens"), msg
    assert 0 < msg.usage.output_tokens <= 16


def test_anthropic_messages_stream(dx: MintedServer) -> None:
    with client(dx).messages.stream(model=MODEL, max_tokens=16, system="You are terse.",
                                    messages=[{"role": "user", "content": "Count from one to five."}]) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len([p for p in pieces if p]) >= 2, pieces
    assert final.content[0].text == "".join(pieces)


def test_anthropic_tool_use(dx: MintedServer) -> None:
    msg = client(dx).messages.create(
        model=MODEL, max_tokens=96, tool_choice={"type": "any"},
        tools=[{"name": "get_weather", "description": "Get the current weather in a city.",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
        messages=[{"role": "user", "content": "What is the weather like in Paris right now?"}])
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather" and isinstance(uses[0].input.get("city"), str), msg
    assert msg.stop_reason == "tool_use", msg


def test_anthropic_wrong_key_is_an_authentication_error(dx: MintedServer) -> None:
    with pytest.raises(anthropic.AuthenticationError) as err:
        client(dx, key="sk-ant-not-the-key").messages.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    assert err.value.status_code == 401


def test_anthropic_unknown_model_is_not_found(dx: MintedServer) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        client(dx).messages.create(model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    assert err.value.status_code == 404
    assert "/.dx/" not in str(err.value.body) and str(err.value.body).count("/root") == 0
