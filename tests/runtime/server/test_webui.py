"""llama.cpp's own web UI through dx: the cpu engine built with ``--webui`` (npm builds the UI
from the pinned source's tools/ui), served by ``dx serve`` at ``/``.

The first run builds that engine (npm ci + npm run build + a ccache'd compile, a few minutes on
2 cores); later runs hit the engine cache.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from support.serve_harness import start_dx
from support.tools import need

pytestmark = pytest.mark.integration

MODEL = "smollm2:135m"


@pytest.fixture(scope="module")
def webui_engine() -> Path:
    from dxbuild.engine.build import host_engine

    need("npm")  # builds llama.cpp's web UI
    return host_engine("cpu", webui=True)


def test_webui_engine_is_its_own_cache_entry(webui_engine: Path, cpu_engine: Path) -> None:
    assert webui_engine != cpu_engine
    info = json.loads((webui_engine / "engine.json").read_text())
    assert info["cmake_flags"]["LLAMA_BUILD_UI"] == "ON"
    assert json.loads((cpu_engine / "engine.json").read_text())["cmake_flags"].get("LLAMA_BUILD_UI") != "ON"


def test_llama_cpp_web_ui_is_served_through_dx(webui_engine: Path, smollm2_gguf: Path, tmp_path: Path) -> None:
    from dx.models.catalog import Store

    Store(root=tmp_path / "home", ollama_dir=False).import_file(smollm2_gguf, MODEL)
    dx = start_dx(tmp_path, "--ctx", "1024", engine=webui_engine / "bin" / "llama-server", model=MODEL)
    try:
        page = httpx.get(f"{dx.url}/", headers={"Accept": "text/html"}, timeout=60)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<html" in page.text.lower() and "dx is serving" not in page.text  # llama.cpp's page, not DX's
        # its script bundle comes through too, without the API key (public assets)
        src = re.search(r'(?:src|href)="\.?/?(_app/[^"]+\.js|bundle[^"]*\.js)"', page.text)
        assert src, page.text[:500]
        asset = httpx.get(f"{dx.url}/{src.group(1)}", timeout=60)
        assert asset.status_code == 200 and len(asset.content) > 10_000
        # the API the UI calls stays behind the key
        assert httpx.get(f"{dx.url}/props", timeout=30).status_code == 401
        assert httpx.get(f"{dx.url}/props", headers=dx.headers, timeout=30).status_code == 200
    finally:
        dx.stop()


CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]


def test_a_browser_logs_in_with_the_printed_url_and_chats_through_dx(
    webui_engine: Path, smollm2_gguf: Path, tmp_path: Path
) -> None:
    """Auth on: the URL `dx serve` prints logs a real browser in (cookie), and llama.cpp's UI answers a chat."""
    from dx.models.catalog import Store

    chromium = need("chromium", "chromium-browser")
    from playwright import sync_api  # the test extra's (drives that chromium): missing is a broken install

    Store(root=tmp_path / "home", ollama_dir=False).import_file(smollm2_gguf, MODEL)
    dx = start_dx(tmp_path, "--ctx", "1024", engine=webui_engine / "bin" / "llama-server", model=MODEL)
    try:
        found = [m.group(1) for line in dx.lines if (m := re.search(r"(http://\S+/\?token=\S+)", line))]
        assert found, dx.lines  # the login URL is printed with the address
        login = found[0]
        statuses: list[tuple[int, str, str]] = []
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page()
                page.on("response", lambda r: statuses.append((r.status, r.request.method, r.url)))
                page.goto(login, wait_until="networkidle")
                assert page.url == f"{dx.url}/", page.url  # the token is not left in the address bar
                (cookie,) = [c for c in page.context.cookies() if c["name"].startswith("dx_session")]
                assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
                box = page.wait_for_selector("textarea", timeout=60_000)
                box.fill("Say hello in three words.")
                with page.expect_response(lambda r: "/v1/chat/completions" in r.url, timeout=120_000) as info:
                    box.press("Enter")
                answer = info.value
                assert answer.status == 200, answer.text()[:300]
                answer.finished()
                page.wait_for_function("document.body.innerText.split('Say hello in three words.').pop()"
                                       ".trim().length > 3", timeout=60_000)
                # the key never reached the browser; every API call the UI made was let in
                assert dx.api_key not in page.content()
                denied = [s for s in statuses if s[0] == 401]
                assert not denied, denied
                # the one-time token is spent: a second browser with the same URL is not logged in
                other = browser.new_context().new_page()
                other.goto(login, wait_until="domcontentloaded")
                assert not [c for c in other.context.cookies() if c["name"].startswith("dx_session")]
            finally:
                browser.close()
    finally:
        dx.stop()
