"""Unloading never cuts an answer, never turns a request away, and keep_alive reaches every engine of a model.

Real engine, real SmolLM2, auth on. Ollama's rules: ``keep_alive: 0`` marks the model to go when its
answers in flight end; the newest request's keep_alive sets the expiry; a model is one thing, so its
embedding engine follows the keep_alive given on a chat.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from support.serve_harness import DXServer, engine_binary, serve_model, wait_for

pytestmark = pytest.mark.integration

MODEL = "smollm2:135m"
SHORT = {"num_predict": 4, "temperature": 0}
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def dx(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("unload")
    server = serve_model(tmp, smollm2_gguf, MODEL, "--ctx", "2048", engine=engine_binary(request))
    assert server.api_key
    yield server
    server.stop()


def _ps(dx: DXServer) -> list[dict]:
    return httpx.get(f"{dx.url}/api/ps", headers=dx.headers, timeout=30).json()["models"]


def _gone(dx: DXServer, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _ps(dx):
            return True
        time.sleep(0.1)
    return not _ps(dx)


def _chat(dx: DXServer, **extra: object) -> httpx.Response:
    return httpx.post(f"{dx.url}/api/chat", headers=dx.headers, timeout=300,
                      json={"model": MODEL, "messages": HI, "stream": False, "options": SHORT, **extra})


def _expires_in(entry: dict) -> float:
    at = dt.datetime.fromisoformat(entry["expires_at"].replace("Z", "+00:00"))
    return (at - dt.datetime.now(dt.timezone.utc)).total_seconds()


def test_unload_during_a_stream_lets_it_finish(dx: DXServer) -> None:
    lines: list[dict] = []
    first = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", f"{dx.url}/api/generate", headers=dx.headers, timeout=300, json={
            "model": MODEL, "prompt": "1, 2, 3, 4, 5,", "raw": True,
            "options": {"num_predict": 64, "temperature": 0},
        }) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line:
                    lines.append(json.loads(line))
                    first.set()

    t = threading.Thread(target=stream)
    t.start()
    assert first.wait(120), "the stream never started"
    gone = httpx.post(f"{dx.url}/api/generate", headers=dx.headers, timeout=60,
                      json={"model": MODEL, "keep_alive": 0})  # another client ejects the model
    assert gone.status_code == 200 and gone.json()["done_reason"] == "unload"
    assert t.is_alive() and not lines[-1]["done"], "the stream ended before the unload was asked"
    [entry] = _ps(dx)  # still answering: listed until its answer ends, expiring now (Ollama's ps)
    assert _expires_in(entry) < 2, entry
    during = _chat(dx, keep_alive=0)  # a request while the unload is pending: served, not a 503
    assert during.status_code == 200 and during.json()["done"] is True, during.text
    t.join(300)
    assert lines[-1]["done"] is True and not any("error" in x for x in lines), lines[-3:]
    assert _gone(dx), _ps(dx)  # and then the engine goes


def test_a_request_racing_an_unload_is_served(dx: DXServer) -> None:
    def unload(answers: list[httpx.Response]) -> None:
        answers.append(httpx.post(f"{dx.url}/api/generate", headers=dx.headers, timeout=60,
                                  json={"model": MODEL, "keep_alive": 0}))

    def chat(answers: list[httpx.Response]) -> None:
        answers.append(_chat(dx))

    for _ in range(3):
        assert _chat(dx).status_code == 200  # loaded and idle
        answers: list[httpx.Response] = []
        threads = [threading.Thread(target=unload, args=(answers,)), threading.Thread(target=chat, args=(answers,))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(300)
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]


def test_keep_alive_zero_on_a_chat_unloads_the_embedding_engine_too(dx: DXServer) -> None:
    assert _chat(dx).status_code == 200
    emb = httpx.post(f"{dx.url}/api/embed", headers=dx.headers, timeout=300, json={"model": MODEL, "input": "hi"})
    assert emb.status_code == 200
    assert len(_ps(dx)) == 1 and len(dx.children()) == 2  # one model to /api/ps, two engines
    assert _chat(dx, keep_alive=0).status_code == 200
    assert _gone(dx, 3.0), _ps(dx)
    assert wait_for(lambda: not dx.children(), timeout=10), "an engine of the model stayed"


@pytest.mark.parametrize(("keep_alive", "seconds"), [(30, 30), ("10m", 600), ("1h30m", 5400), (-1, None),
                                                     ("-1m", None)])
def test_every_form_of_keep_alive_reaches_every_engine(dx: DXServer, keep_alive: object,
                                                       seconds: int | None) -> None:
    emb = httpx.post(f"{dx.url}/api/embed", headers=dx.headers, timeout=300, json={"model": MODEL, "input": "hi"})
    assert emb.status_code == 200
    assert _chat(dx, keep_alive=keep_alive).status_code == 200
    [entry] = _ps(dx)  # its generation and embedding engines are one model to /api/ps
    assert len(dx.children()) == 2
    if seconds is None:
        assert entry["expires_at"].startswith("2318-"), entry  # forever, as Ollama shows it
    else:
        assert abs(_expires_in(entry) - seconds) < 15, entry
    assert httpx.post(f"{dx.url}/api/generate", headers=dx.headers, timeout=60,
                      json={"model": MODEL, "keep_alive": "0s"}).json()["done_reason"] == "unload"
    assert _gone(dx), _ps(dx)
    assert wait_for(lambda: not dx.children(), timeout=10), "an engine of the model stayed"
