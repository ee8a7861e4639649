"""Open WebUI (``open-webui`` from PyPI, offline) in Debian's Chromium, chatting through the minted executable.

Open WebUI gets its own venv in the DX cache (tests/support/peers.py: a few GB, ~10 minutes the first
time on 2 cores, reused after). It runs single-user (``WEBUI_AUTH=False``) with its data in a temporary
folder, no model downloads (``OFFLINE_MODE``), and one Ollama connection: the executable's URL with its
API key (``OLLAMA_API_CONFIGS``), as a user sets it in Admin Settings > Connections.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support.minted_server import MODEL, MintedServer, free_port
from support.peers import OPEN_WEBUI_VERSION, open_webui_python
from support.serve_harness import stop_process
from support.tools import need

# the cold venv (~10 min on 2 cores) comes on top of the few minutes the test itself takes
pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]
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


@dataclass
class WebUI:
    url: str
    token: str
    proc: subprocess.Popen  # type: ignore[type-arg]
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


@pytest.fixture(scope="module")
def webui(dx: MintedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebUI]:
    python = open_webui_python()
    tmp = tmp_path_factory.mktemp("open-webui")
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(tmp / "home"), "DATA_DIR": str(tmp / "data"),
        "WEBUI_AUTH": "False", "WEBUI_SECRET_KEY": "dx-client-test", "OFFLINE_MODE": "true",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAG_EMBEDDING_MODEL_AUTO_UPDATE": "False",
        "RAG_RERANKING_MODEL_AUTO_UPDATE": "False", "RAG_EMBEDDING_ENGINE": "ollama",
        "ENABLE_OLLAMA_API": "True", "OLLAMA_BASE_URL": dx.url,
        "OLLAMA_API_CONFIGS": json.dumps({"0": {"enable": True, "key": dx.api_key}}),
        "ENABLE_OPENAI_API": "False", "ENABLE_VERSION_UPDATE_CHECK": "False",
        # background tasks that would each hold one of the engine's slots on 2 cores
        "ENABLE_TITLE_GENERATION": "False", "ENABLE_TAGS_GENERATION": "False",
        "ENABLE_FOLLOW_UP_GENERATION": "False", "ENABLE_AUTOCOMPLETE_GENERATION": "False",
        # SmolLM2 may call the tool again after its answer: two rounds end the chat
        "CHAT_RESPONSE_MAX_TOOL_CALL_ITERATIONS": "2",
        "ANONYMIZED_TELEMETRY": "False", "DO_NOT_TRACK": "true", "SCARF_NO_ANALYTICS": "true",
    }
    (tmp / "home").mkdir()
    log = tmp / "open-webui.log"
    # `open-webui serve`, through its entry point (the venv was renamed into place: its scripts' #! are stale)
    proc = subprocess.Popen(
        [str(python), "-c", "import sys; sys.argv[0] = 'open-webui'; from open_webui import app; app()",
         "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdin=subprocess.DEVNULL, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            raise AssertionError(f"Open WebUI did not start:\n{log.read_text(errors='replace')[-4000:]}")
        signin = httpx.post(f"{url}/api/v1/auths/signin", json={"email": "", "password": ""}, timeout=60)
        assert signin.status_code == 200, signin.text
        ui = WebUI(url, signin.json()["token"], proc, log)
        # no "What's New" dialog over the page; short, repeatable answers
        r = httpx.post(f"{url}/api/v1/users/user/settings/update", headers=ui.headers, timeout=60, json={
            "ui": {"showChangelog": False, "version": OPEN_WEBUI_VERSION,
                   "params": {"temperature": 0, "seed": 7, "max_tokens": 48}}})
        assert r.status_code == 200, r.text
        yield ui
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def browser(webui: WebUI) -> Iterator[object]:
    chromium = need("chromium", "chromium-browser")
    from playwright import sync_api

    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


def open_page(browser, webui: WebUI):  # type: ignore[no-untyped-def]
    """A logged-in page (the token Open WebUI's own single-user sign-in gave) at a new chat."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_init_script(f"localStorage.setItem('token', {json.dumps(webui.token)})")
    page = context.new_page()
    page.goto(webui.url, wait_until="domcontentloaded")
    page.wait_for_selector("#chat-input", timeout=120_000)
    return page


def send(page, text: str) -> None:  # type: ignore[no-untyped-def]
    box = page.locator("#chat-input")
    box.click()
    box.fill(text)
    page.keyboard.press("Enter")


def last_answer(page) -> str | None:  # type: ignore[no-untyped-def]
    return page.evaluate("(() => { const all = document.querySelectorAll('#response-content-container');"
                         " return all.length ? all[all.length - 1].innerText : null })()")


def wait_answered(page, timeout: float = 300) -> list[str]:  # type: ignore[no-untyped-def]
    """Every text the answer showed while it streamed, until Open WebUI offers to regenerate it."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = last_answer(page)
        if text is not None and (not seen or seen[-1] != text):
            seen.append(text)
        if page.locator("button[aria-label='Regenerate']").count():
            text = last_answer(page)
            if text is not None and seen[-1] != text:
                seen.append(text)
            return seen
        time.sleep(0.05)
    raise AssertionError(f"no finished answer in {timeout} s; shown: {seen[-3:]}")


def latest_chat(webui: WebUI) -> dict:
    chats = httpx.get(f"{webui.url}/api/v1/chats/", headers=webui.headers, timeout=60).json()
    assert chats, "Open WebUI saved no chat"
    return httpx.get(f"{webui.url}/api/v1/chats/{chats[0]['id']}", headers=webui.headers, timeout=60).json()


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
