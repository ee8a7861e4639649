"""EngineManager's unload and keep-alive rules, without an engine: a stand-in process takes its place.

What an engine does is tested with the real one (test_unload_lifecycle.py); here, what the manager
decides: when an unload happens, what it waits for, and which engines a keep_alive reaches.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dx.engine import manager as manager_mod
from dx.engine.manager import EngineManager
from dx.models.source import ModelSource

_pids = itertools.count(1000)


class StandIn:
    """What the manager uses of an Engine: alive, stop, stopping, ctx, load_args, pid, url."""

    def __init__(self, source: ModelSource, *, ctx: int | None = None, purpose: str = "generate",
                 load_args: tuple[str, ...] = (), **_: object) -> None:
        self.source, self.ctx, self.purpose, self.load_args = source, ctx, purpose, tuple(load_args)
        self.pid, self.url = next(_pids), "http://127.0.0.1:1"
        self.stopping = False
        self.stopped = False

    def alive(self) -> bool:
        return not self.stopped

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping = True
        self.stopped = True


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[StandIn]:
    engines: list[StandIn] = []

    def start(source: ModelSource, **kw: object) -> StandIn:
        engine = StandIn(source, **kw)  # type: ignore[arg-type]
        engines.append(engine)
        return engine

    monkeypatch.setattr(manager_mod.Engine, "start", staticmethod(start))
    return engines


@pytest.fixture
def mgr(tmp_path: Path, started: list[StandIn]) -> Iterator[EngineManager]:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    m = EngineManager(lambda name: ModelSource(path=model, name=name or "m"), reap_interval=0.05)
    yield m
    m.close()


def _wait(cond, timeout: float = 2.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_unloading_an_idle_model_stops_it_at_once(mgr: EngineManager, started: list[StandIn]) -> None:
    mgr.get("m")
    assert mgr.unload("m") is True
    assert started[0].stopped and mgr.loaded() == []
    assert mgr.unload("m") is False  # nothing left to unload


def test_unloading_a_busy_model_waits_for_its_answer(mgr: EngineManager, started: list[StandIn]) -> None:
    with mgr.lease("m") as engine:
        assert mgr.unload("m") is True  # it will go
        assert not engine.stopped  # ... but not under the answer in flight
        [lm] = mgr.loaded()
        assert abs(lm.expires_at - time.time()) < 1.0  # Ollama's ps: expires as soon as its answers end
        time.sleep(0.2)  # the reaper looks meanwhile, and leaves it
        assert not engine.stopped
    assert _wait(lambda: engine.stopped), "the last answer ended but the engine stayed"
    assert mgr.loaded() == []


def test_the_last_of_several_answers_unloads(mgr: EngineManager, started: list[StandIn]) -> None:
    first = mgr.lease("m")
    engine = first.__enter__()
    with mgr.lease("m", 0):
        mgr.unload("m")
    time.sleep(0.2)
    assert not engine.stopped  # one answer still runs
    first.__exit__(None, None, None)
    assert _wait(lambda: engine.stopped)


def test_a_request_after_the_unload_was_asked_sets_the_expiry_again(mgr: EngineManager,
                                                                     started: list[StandIn]) -> None:
    """Ollama: the newest request's keep_alive counts, so a model still in use by a new request stays."""
    with mgr.lease("m") as engine:
        mgr.unload("m")
        with mgr.lease("m", "10m") as same:
            assert same is engine  # served at once by the loaded engine, no wait, no 503
    time.sleep(0.3)
    assert not engine.stopped
    [lm] = mgr.loaded()
    assert 590 < lm.expires_at - time.time() <= 600


def test_a_request_during_an_unload_gets_a_fresh_engine(mgr: EngineManager, started: list[StandIn]) -> None:
    first = mgr.get("m")
    started_stop = threading.Event()
    real_stop = first.stop

    def slow_stop(timeout: float = 5.0) -> None:
        started_stop.set()
        time.sleep(0.3)
        real_stop(timeout)

    first.stop = slow_stop  # type: ignore[method-assign]
    t = threading.Thread(target=mgr.unload, args=("m",))
    t.start()
    assert started_stop.wait(2)
    with mgr.lease("m") as engine:  # waits for the stop, then loads again
        assert engine is not first and first.stopped and not engine.stopped
    t.join()
    assert [lm.pid for lm in mgr.loaded()] == [engine.pid]


def test_keep_alive_reaches_every_engine_of_the_model(mgr: EngineManager, started: list[StandIn]) -> None:
    mgr.get("m", purpose="embed")
    mgr.get("m")
    assert len(mgr.loaded()) == 2
    mgr.get("m", 0)  # a chat with keep_alive 0
    assert _wait(lambda: mgr.loaded() == []), [lm.purpose for lm in mgr.loaded()]
    assert all(e.stopped for e in started)


@pytest.mark.parametrize(("keep_alive", "seconds"), [
    (30, 30.0), ("1h", 3600.0), ("90s", 90.0), (-1, None), ("-1m", None), ("-1", None),
])
def test_every_form_of_keep_alive_sets_both_engines(mgr: EngineManager, keep_alive: object,
                                                    seconds: float | None) -> None:
    mgr.get("m", purpose="embed")
    mgr.get("m", keep_alive)
    loaded = mgr.loaded()
    assert {lm.purpose for lm in loaded} == {"generate", "embed"}
    for lm in loaded:
        if seconds is None:
            assert lm.expires_at is None  # forever: /api/ps shows Ollama's far date
        else:
            assert abs(lm.expires_at - time.time() - seconds) < 2


def test_eviction_skips_a_busy_engine(tmp_path: Path, started: list[StandIn]) -> None:
    paths = []
    for name in ("a", "b"):
        p = tmp_path / f"{name}.gguf"
        p.write_bytes(b"GGUF")
        paths.append(p)
    m = EngineManager(lambda name: ModelSource(path=tmp_path / f"{name}.gguf", name=name), max_loaded=1,
                      reap_interval=0.05)
    try:
        with m.lease("a") as a, m.lease("b") as b:
            assert not a.stopped and not b.stopped  # over the limit, but a is answering
        assert not b.stopped
        m.get("a")
        assert b.stopped  # b idle now: evicted for a
    finally:
        m.close()


def test_an_unload_waits_only_so_long(mgr: EngineManager, started: list[StandIn],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_mod, "UNLOAD_GRACE", 0.2)
    with mgr.lease("m") as engine:
        mgr.unload("m")
        assert _wait(lambda: engine.stopped, 3), "an answer that never ends held the unload forever"
