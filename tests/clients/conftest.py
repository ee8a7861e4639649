"""Client libraries nobody here wrote, against a minted executable with auth on.

One server for the whole folder: the minted SmolLM2 executable (session fixture ``minted_smollm2``:
a real mint, cached engine and bundle) started as a user would, ``serve --port N`` in a fresh HOME, so the
key it prints is the only one it takes. DX_TEST_MINTED=/path/to/dx-smollm2-cpu-linux-x86_64 uses that
executable instead of minting one (a developer iterating on these tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.minted_server import MODEL, MintedServer, start_minted
from support.open_webui import CHROMIUM_FLAGS, WebUI, start_open_webui
from support.tools import need


@pytest.fixture(scope="session")
def minted_exe(request: pytest.FixtureRequest) -> Path:
    env = os.environ.get("DX_TEST_MINTED")
    if env:
        return Path(env)
    return Path(request.getfixturevalue("minted_smollm2"))


@pytest.fixture(scope="session")
def dx(minted_exe: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MintedServer]:
    server = start_minted(minted_exe, tmp_path_factory.mktemp("clients-home"))
    # the engine is loaded before the first client times anything
    r = httpx.post(f"{server.url}/api/generate", headers=server.headers, timeout=300,
                   json={"model": MODEL, "prompt": "Hi", "options": {"num_predict": 1}, "stream": False})
    assert r.status_code == 200, (r.status_code, r.text, server.output())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def api(dx: MintedServer) -> Iterator[httpx.Client]:
    """Raw HTTP with the key (Bearer)."""
    with httpx.Client(base_url=dx.url, headers=dx.headers, timeout=300) as client:
        yield client


@pytest.fixture(scope="session")
def webui(dx: MintedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebUI]:
    """One Open WebUI for the session (~20 s to start), its Ollama connection ``dx``."""
    with start_open_webui(dx, tmp_path_factory.mktemp("open-webui")) as ui:
        yield ui


@pytest.fixture(scope="module")
def browser(webui: WebUI) -> Iterator[object]:
    """Debian's Chromium driven by Playwright, one per test file: Playwright's sync API runs an asyncio
    loop in this thread while it is open, so a session-long one breaks every later ``asyncio.run``
    (the mcp SDK's tests) and every later sync Playwright (tests/runtime/server/test_webui.py)."""
    chromium = need("chromium", "chromium-browser")
    from playwright import sync_api

    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()
