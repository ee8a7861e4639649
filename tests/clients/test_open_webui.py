"""Open WebUI (``open-webui`` from PyPI, offline) in Debian's Chromium, chatting through the minted executable.

Open WebUI gets its own venv in the DX cache (tests/support/peers.py: a few GB, ~10 minutes the first
time on 2 cores, reused after); tests/support/open_webui.py starts it (one process for the session,
shared with test_open_webui_models.py).
"""

from __future__ import annotations

import json

import httpx
import pytest
from support.minted_server import MODEL, MintedServer
from support.open_webui import WebUI, latest_chat, open_page, send, wait_answered

# the cold venv (~10 min on 2 cores) comes on top of the few minutes the test itself takes
pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]

TOOL_ID = "dx_weather"
# The tool answers with a word the model cannot make up: seeing it in the chat means the tool ran.
TOOL_SOURCE = '''"""
title: Weather
description: The weather in a city.
"""


class Tools:
    def get_weather(self, city: str) -> str:
        """
        Get the current weather in a city.
        :param city: The name of the city.
        """
        return f"The weather in {city}: sunny, 22 degrees, code ZEBRA-7431."
'''
TOOL_MODEL = "smollm2-weather"


def test_open_webui_lists_the_model_with_its_details(webui: WebUI, browser, dx: MintedServer) -> None:  # type: ignore[no-untyped-def]
    (tag,) = [m for m in httpx.get(f"{dx.url}/api/tags", headers=dx.headers, timeout=60).json()["models"]
              if m["name"].split(":")[0] == MODEL]
    models = httpx.get(f"{webui.url}/api/models", headers=webui.headers, timeout=120).json()["data"]
    (model,) = [m for m in models if m["id"] == tag["name"]]
    assert model["ollama"]["details"]["quantization_level"] == "Q4_1", model  # the key reached DX
    page = open_page(browser, webui)
    page.locator("#model-selector-model-button").click()
    listing = page.locator("#model-selector-list").inner_text(timeout=30_000)
    assert tag["name"] in listing and tag["details"]["parameter_size"] in listing, listing
    page.context.close()


def test_open_webui_defaults_say_why_a_small_context_cannot_take_its_builtin_tools(webui: WebUI, browser) -> None:  # type: ignore[no-untyped-def]
    """Open WebUI's defaults: native function calling, so its built-in tools ride along with every chat —
    about 8,000 tokens of tool schemas that now reach the model, more than the context per slot DX gives
    SmolLM2 (4,096, or less after a client asked for a smaller num_ctx). The chat shows the engine's one-line
    reason (a 400 that names the context), not a hang or a server error; a bigger --ctx, or the built-in
    tools off (the next test), and it streams."""
    page = open_page(browser, webui)
    send(page, "Name three colours.")
    shown = wait_answered(page)
    assert "exceeds the available context size" in shown[-1], shown[-1]
    assert "internal error" not in shown[-1].lower() and "500" not in shown[-1], shown[-1]
    page.context.close()


def test_open_webui_streams_an_answer_without_builtin_tools(webui: WebUI, browser, dx: MintedServer) -> None:  # type: ignore[no-untyped-def]
    """The model's built-in tools turned off in Open WebUI's model settings (after the test above: it
    changes the model for the rest of the module): a plain streamed chat."""
    base = next(m["name"] for m in httpx.get(f"{dx.url}/api/tags", headers=dx.headers, timeout=60).json()["models"]
                if m["name"].split(":")[0] == MODEL)
    r = httpx.post(f"{webui.url}/api/v1/models/create", headers=webui.headers, timeout=60, json={
        "id": base, "name": base, "meta": {"capabilities": {"builtin_tools": False}}, "params": {}})
    assert r.status_code == 200, r.text
    page = open_page(browser, webui)
    send(page, "Name three colours.")
    shown = wait_answered(page)
    growing = [s for s in shown if s.strip()]
    assert len(growing) >= 3, f"the answer did not stream: {shown}"
    assert "error" not in shown[-1].lower() and "context size" not in shown[-1], shown[-1]
    page.context.close()


def test_open_webui_chat_uses_a_tool(webui: WebUI, browser, dx: MintedServer) -> None:  # type: ignore[no-untyped-def]
    """A Tool made through Open WebUI's API, on a workspace model with native function calling: the model
    calls it through DX, Open WebUI runs it, and its answer is in the chat."""
    h = webui.headers
    r = httpx.post(f"{webui.url}/api/v1/tools/create", headers=h, timeout=60, json={
        "id": TOOL_ID, "name": "Weather", "content": TOOL_SOURCE, "meta": {"description": "The weather in a city."}})
    assert r.status_code == 200, r.text
    base = next(m["name"] for m in httpx.get(f"{dx.url}/api/tags", headers=dx.headers, timeout=60).json()["models"]
                if m["name"].split(":")[0] == MODEL)
    r = httpx.post(f"{webui.url}/api/v1/models/create", headers=h, timeout=60, json={
        "id": TOOL_MODEL, "base_model_id": base, "name": "Weather helper",
        "meta": {"description": "SmolLM2 with a weather tool", "toolIds": [TOOL_ID],
                 "capabilities": {"builtin_tools": False}},
        "params": {"function_calling": "native", "temperature": 0, "seed": 7, "max_tokens": 96}})
    assert r.status_code == 200, r.text
    page = open_page(browser, webui)
    page.goto(f"{webui.url}/?model={TOOL_MODEL}", wait_until="domcontentloaded")
    page.wait_for_selector("#chat-input", timeout=120_000)
    assert "Weather helper" in page.locator("#model-selector-model-button").inner_text(timeout=30_000)
    send(page, "What is the weather like in Paris right now? Use the get_weather tool.")
    wait_answered(page)
    answer = page.locator("#response-content-container").last.inner_text()
    assert "get_weather" in answer, answer  # Open WebUI shows the call it ran in the answer
    chat = json.dumps(latest_chat(webui))
    assert "ZEBRA-7431" in chat, chat[-3000:]  # the tool's answer went back to the model
    page.context.close()
