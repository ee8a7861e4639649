"""Open WebUI (``open-webui`` from PyPI, offline) as the client tests drive it: the process and a few page helpers.

It runs single-user (``WEBUI_AUTH=False``) with its data in a temporary folder, no model downloads
(``OFFLINE_MODE``), and one Ollama connection: a DX server's URL with its API key
(``OLLAMA_API_CONFIGS``), as a user sets it in Admin Settings > Connections. One process serves every
test of the session (tests/clients/conftest.py: ``webui``, ``browser``).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from support.minted_server import MintedServer, free_port
from support.peers import OPEN_WEBUI_VERSION, open_webui_python
from support.serve_harness import stop_process

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]


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


@contextlib.contextmanager
def start_open_webui(dx: MintedServer, tmp: Path) -> Iterator[WebUI]:
    """``open-webui serve`` on a free port, its one Ollama connection ``dx``, signed in; stopped on exit."""
    python = open_webui_python()
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


def new_page(browser, webui: WebUI, path: str = "/"):  # type: ignore[no-untyped-def]
    """A logged-in page (the token Open WebUI's own single-user sign-in gave) at ``path``."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_init_script(f"localStorage.setItem('token', {json.dumps(webui.token)})")
    page = context.new_page()
    page.goto(f"{webui.url}{path}", wait_until="domcontentloaded")
    return page


def open_page(browser, webui: WebUI, path: str = "/"):  # type: ignore[no-untyped-def]
    """A logged-in page at a new chat (``path``: e.g. ``/?model=NAME``), once its message box is there."""
    page = new_page(browser, webui, path)
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
