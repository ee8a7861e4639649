"""A chat request reads its model's defaults (a created model's manifest, an Ollama params/system layer, a
minted executable's trailer) once, though three places ask for them: the handler (the model's SYSTEM and
MESSAGEs go before the chat's), the engine lease (the defaults are part of the slot key) and the engine start
(its flags). ``dx.models.defaults.once_per_request`` scopes the memo to one request, so the next request
reads the store again and sees a create or delete made in between.

The integration case serves in-process (``dx.server.app.make_server``) with the real engine and SmolLM2, so
the reader can be counted; the unit case uses a handcrafted GGUF.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.gguf_handcraft import tiny_model
from support.serve_harness import engine_binary

from dx.engine.manager import EngineManager
from dx.models import defaults
from dx.models.catalog import ModelResolver, Store
from dx.models.create import CreateSpec, create
from dx.server.app import make_server
from dx.server.context import App

PERSONA = "You are a pirate captain."


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every time the defaults are read from the store (a created model's manifest first), by model name."""
    reads: list[str] = []
    real = defaults._created

    def counted(source):  # type: ignore[no-untyped-def]
        reads.append(source.name)
        return real(source)

    monkeypatch.setattr(defaults, "_created", counted)
    return reads


def _created(store: Store, gguf: Path, system: str) -> None:
    base = store.import_file(gguf, "base:latest", link=True)
    create(store, CreateSpec(name="pirate", system=system), base, defaults.NONE, lambda _line: None)


def test_once_per_request_reads_once_and_the_next_request_reads_again(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DX_HOME", str(tmp_path / "home"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(tiny_model().build().data)
    store = Store()
    _created(store, gguf, PERSONA)
    source = store.resolve("pirate")
    reads = _count_reads(monkeypatch)
    with defaults.once_per_request():
        first, again = defaults.for_source(source), defaults.for_source(source)
    assert first.system == PERSONA and again is first
    assert reads == ["pirate:latest"]
    _created(store, gguf, "You are a parrot.")  # the manifest is replaced between two requests
    with defaults.once_per_request():
        assert defaults.for_source(source).system == "You are a parrot."
    assert reads == ["pirate:latest"] * 2
    assert defaults.for_source(source).system == "You are a parrot."  # outside a request: read every time
    assert len(reads) == 3


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smollm2_gguf: Path,
           request: pytest.FixtureRequest) -> Iterator[tuple[str, EngineManager]]:
    """An in-process server over a store holding SmolLM2 and 'pirate' (SmolLM2 with a SYSTEM)."""
    monkeypatch.setenv("DX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DX_ENGINE", str(engine_binary(request)))
    _created(Store(), smollm2_gguf, PERSONA)
    resolver = ModelResolver(None)
    manager = EngineManager(resolver, parallel=1, ctx=512)
    server = make_server("127.0.0.1", 0, App(manager, resolver, None))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", manager
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
        manager.close()


@pytest.mark.integration
def test_a_chat_reads_the_model_defaults_once(served: tuple[str, EngineManager],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    url, manager = served
    reads = _count_reads(monkeypatch)
    chat = {"model": "pirate", "messages": [{"role": "user", "content": "Hi"}]}
    with httpx.Client(base_url=url, timeout=300) as http:
        r = http.post("/v1/chat/completions", json={**chat, "max_tokens": 2})  # cold: the engine starts too
        assert r.status_code == 200, r.text
        assert reads == ["pirate:latest"]
        r = http.post("/v1/chat/completions", json={**chat, "max_tokens": 2})  # warm
        assert r.status_code == 200, r.text
        assert reads == ["pirate:latest"] * 2
        r = http.post("/api/chat", json={**chat, "stream": False, "options": {"num_predict": 2}})
        assert r.status_code == 200, r.text
        assert reads == ["pirate:latest"] * 3
    assert len(manager.loaded()) == 1  # one engine: every request found the same defaults, so the same slot
