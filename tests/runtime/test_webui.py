"""llama.cpp's own web UI through dx: the cpu engine built with ``--webui`` (npm builds the UI
from the pinned source's tools/ui), served by ``dx serve`` at ``/``.

The first run builds that engine (npm ci + npm run build + a ccache'd compile, a few minutes on
2 cores); later runs hit the engine cache.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import httpx
import pytest
from serve_harness import start_dx

pytestmark = pytest.mark.integration

MODEL = "smollm2:135m"


@pytest.fixture(scope="module")
def webui_engine() -> Path:
    from dxbuild.engine import host_engine

    if shutil.which("npm") is None:  # test.sh installs it where it can, as with the other tools
        pytest.skip("npm is needed to build llama.cpp's web UI (apt-get install npm)")
    return host_engine("cpu", webui=True)


def test_webui_engine_is_its_own_cache_entry(webui_engine: Path, cpu_engine: Path) -> None:
    assert webui_engine != cpu_engine
    info = json.loads((webui_engine / "engine.json").read_text())
    assert info["cmake_flags"]["LLAMA_BUILD_UI"] == "ON"
    assert json.loads((cpu_engine / "engine.json").read_text())["cmake_flags"].get("LLAMA_BUILD_UI") != "ON"


def test_llama_cpp_web_ui_is_served_through_dx(webui_engine: Path, smollm2_gguf: Path, tmp_path: Path) -> None:
    from dx.store import Store

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
