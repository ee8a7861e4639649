"""The engine supervisor: one ``llama-server`` child per loaded model, leased per request.

``EngineManager`` keeps the loaded models (``LoadedModel``), their parallel slots,
unloads a model after its idle keep-alive (Ollama's ``keep_alive``), and stops
restarting an engine that keeps crashing (``EngineCrashLoop``). One engine's life
is ``dx.engine.process``; how it is spawned, ``dx.engine.launcher``.

An unload never cuts an answer short: a model asked to unload (``keep_alive: 0``,
a delete) while it is answering gets keep-alive 0 instead, as Ollama's runner
does, and goes when its last answer ends (within ``UNLOAD_GRACE`` at most). A
request arriving meanwhile is served by the loaded engine and its own
``keep_alive`` then counts (Ollama: the newest request sets the expiry); one
arriving while an engine is being stopped waits for that and gets a fresh one.
A ``keep_alive`` applies to every engine of the model (generation, embeddings).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dx import metrics
from dxverify.errors import DXError, ToolError

if TYPE_CHECKING:
    pass

from dx.engine.keep_alive import DEFAULT_KEEP_ALIVE, parse_keep_alive
from dx.engine.launcher import _tail
from dx.engine.process import (
    CRASH_BACKOFF,
    CRASH_LIMIT,
    CRASH_WINDOW,
    DEFAULT_CTX_PER_SLOT,
    DEFAULT_PARALLEL,
    EMBED_PARALLEL,
    GENERATE,
    Engine,
)
from dx.engine.spec_auto import IDLE_BEFORE_RECHECK, AutoSpec, Decision, stale
from dx.models.adapters import adapter_key
from dx.models.defaults import ModelDefaults, for_source
from dx.models.source import ModelSource


@dataclass
class LoadedModel:
    """What /api/ps reports for one running engine."""

    name: str
    source: ModelSource
    pid: int
    url: str
    ctx: int
    expires_at: float | None  # epoch seconds; None = kept forever
    in_use: int
    restarts: int
    purpose: str = GENERATE
    engine: Engine | None = field(default=None, repr=False, compare=False)
    speculation: dict | None = None  # --spec auto's decision and its numbers, or {"mode": "forced"}; None: none


@dataclass
class _Slot:
    source: ModelSource
    purpose: str = GENERATE
    lock: threading.Lock = field(default_factory=threading.Lock)
    engine: Engine | None = None
    in_use: int = 0
    keep_alive: float | None = DEFAULT_KEEP_ALIVE
    last_used: float = 0.0
    ctx: int = DEFAULT_CTX_PER_SLOT
    restarts: int = 0
    crash_times: list[float] = field(default_factory=list)
    failed_until: float = 0.0
    failure: str = ""
    failure_log: Path | None = None
    unload_reason: str = ""  # an unload asked while answers were in flight: done when the last ends
    unload_since: float = 0.0
    spec_decision: Decision | None = None  # --spec auto: measured at load, re-checked after AutoSpec.recheck
    speculating: bool = False  # the running engine was started with speculation


UNLOAD_GRACE = 900.0  # seconds an asked-for unload waits for answers in flight (the engine's own request timeout)


def _slot_ctx(defaults: ModelDefaults, server_ctx: int | None) -> int:
    """The context per slot an engine of this model starts with: the server's ``--ctx``, else the model's own
    ``num_ctx``, else DX's default."""
    return server_ctx or defaults.ctx or DEFAULT_CTX_PER_SLOT


def slot_key(
    source: ModelSource, purpose: str, defaults: ModelDefaults, adapters: tuple[str, ...], server_ctx: int | None,
) -> tuple[str | int, ...]:
    """Which engine serves a model: names that share a key share one ``llama-server``.

    Two names for one blob may carry different defaults (Ollama params, a created model's ``PARAMETER``s),
    and every default DX has is a flag the engine is started with: its context per slot (``num_ctx``, the
    load option Ollama reloads its runner for), the load-time flags (``num_batch``, ``num_thread``, ...)
    and the sampling defaults (``--temp``, ``-r STOP``: the engine's defaults for requests that set none).
    So each of them is part of the key, as are the LoRA adapters' digests (a Modelfile's ``ADAPTER``; once:
    engine_args() carries no ``--lora``, dx.models.adapters is the one path to the flags) and its ``DRAFT``
    (``draft_args()``: whether the engine speculates with it is --spec's to decide). A request's own
    options (its ``temperature``, its ``num_ctx``) are not: they go to or reload the model's engine.
    The key starts with ``ModelSource.key`` (the bytes), then the purpose: the manager matches on that.
    """
    return (*source.key, purpose, _slot_ctx(defaults, server_ctx), *defaults.engine_args(), *defaults.draft_args(),
            *adapters)


class EngineCrashLoop(ToolError):
    """The engine keeps dying right after start; give up instead of spinning."""


class EngineManager:
    """Loads engines on demand, shares them between requests, unloads idle ones.

    ``resolve(model_spec) -> ModelSource`` turns an API model name into bytes on
    disk (the store's ``dx.models.store.resolve``, or a fixed source for ``dx serve FILE``).
    """

    def __init__(
        self,
        resolve: Callable[[str], ModelSource],
        *,
        binary: Path | None = None,
        log_dir: Path | None = None,
        parallel: int = DEFAULT_PARALLEL,
        ctx: int | None = None,  # None: the model's own num_ctx, else DEFAULT_CTX_PER_SLOT
        default_keep_alive: float | None = DEFAULT_KEEP_ALIVE,
        max_loaded: int = 3,
        reap_interval: float = 1.0,
        extra_args: Sequence[str] | Callable[[str], Sequence[str]] = (),
        model_args: Callable[[ModelSource, str], Sequence[str]] | None = None,
        spec_auto: AutoSpec | None = None,
    ) -> None:
        self._resolve = resolve
        self._binary = binary
        self._log_dir = log_dir
        self._parallel = parallel
        self._ctx = ctx
        self._default_keep_alive = default_keep_alive
        self._max_loaded = max_loaded
        # a callable is asked at every (re)start, with the engine's purpose (dx.swarm.head: the workers still up)
        self._extra_args = extra_args if callable(extra_args) else tuple(extra_args)
        # asked at every (re)start with the model and purpose (dx.engine.speculative: the draft for its target only)
        self._model_args = model_args
        # --spec auto: model_args' speculation is used only where it measured faster (dx.engine.spec_auto)
        self._spec_auto = spec_auto
        self._slots: dict[tuple[str | int, ...], _Slot] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._kick = threading.Event()  # a lease ended or close(): the reaper looks now
        self._reaper = threading.Thread(target=self._reap_loop, args=(reap_interval,), name="dx-reaper", daemon=True)
        self._reaper.start()

    @property
    def default_keep_alive(self) -> float | None:
        return self._default_keep_alive

    def resolve(self, model: str) -> ModelSource:
        return self._resolve(model)

    def get(
        self, model: str, keep_alive: object = None, *, num_ctx: int | None = None, purpose: str = GENERATE
    ) -> Engine:
        """The running engine for ``model``, started (verified first) if needed.

        Marks the model used now; it stays loaded ``keep_alive`` after its last use.
        """
        with self.lease(model, keep_alive, num_ctx=num_ctx, purpose=purpose) as engine:
            return engine

    @contextlib.contextmanager
    def lease(
        self, model: str, keep_alive: object = None, *, num_ctx: int | None = None, purpose: str = GENERATE,
        load_args: tuple[str, ...] | None = None,
    ) -> Iterator[Engine]:
        """Hold the model's engine for one request: it is not unloaded while leased.

        ``load_args``: a request's load-time engine flags (Ollama's load options); None takes
        whatever the running engine was started with.
        """
        keep = self._default_keep_alive if keep_alive is None else parse_keep_alive(keep_alive)
        source = self._resolve(model)

        defaults = for_source(source)
        adapters = adapter_key(source)
        with self._lock:
            key = slot_key(source, purpose, defaults, adapters, self._ctx)
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot(source=source, purpose=purpose, ctx=_slot_ctx(defaults, self._ctx))
            slot.in_use += 1
            now = time.monotonic()
            # one model, one keep-alive: Ollama has one runner per model, DX an engine per purpose
            for k, other in self._slots.items():
                if k[:2] == key[:2]:  # the same bytes (dict keys start with ModelSource.key)
                    other.keep_alive = keep
                    other.last_used = now
                    if keep != 0:  # the newest request sets the expiry, also over an unload asked before
                        other.unload_reason, other.unload_since = "", 0.0
        try:
            engine = self._ensure_running(slot, num_ctx, load_args)
            self._evict_over_limit(keep=slot)
            yield engine
        finally:
            with self._lock:
                slot.in_use -= 1
                slot.last_used = time.monotonic()
            self._kick.set()

    def _ensure_running(self, slot: _Slot, num_ctx: int | None, load_args: tuple[str, ...] | None = None) -> Engine:
        with slot.lock:
            engine = slot.engine
            # without num_ctx a request takes whatever context is loaded (no reload thrash)
            want_ctx = num_ctx or (engine.ctx if engine is not None else slot.ctx)
            # the same for load options: none given, the loaded engine's flags stand
            running_args = engine.load_args if engine is not None else ()
            want_args = running_args if load_args is None else _for_purpose(load_args, slot.purpose)
            if engine is not None and engine.alive() and (engine.ctx != want_ctx or running_args != want_args):
                if slot.in_use > 1:  # busy: serve with the loaded context rather than cut others off
                    return engine
                engine.stop()  # Ollama reloads the model for a different num_ctx or load option
                engine = slot.engine = None
            if engine is not None and engine.alive():
                return engine
            if engine is not None:  # died: restart, unless it keeps dying at once
                self._note_crash(slot, engine)
                engine.stop()
                slot.engine = None
                slot.restarts += 1
                metrics.ENGINE_RESTARTS.inc(slot.source.display_name, slot.purpose)
            self._check_backoff(slot)
            base = [*(self._extra_args(slot.purpose) if callable(self._extra_args) else self._extra_args)]
            spec_args = list(self._model_args(slot.source, slot.purpose) if self._model_args else ())

            def start(spec: Sequence[str]) -> Engine:
                engine = Engine.start(
                    slot.source,
                    ctx=want_ctx,
                    parallel=self._parallel if slot.purpose == GENERATE else EMBED_PARALLEL,  # embed, rerank
                    binary=self._binary,
                    log_dir=self._log_dir,
                    extra_args=[*base, *spec],
                    purpose=slot.purpose,
                    load_args=want_args,
                )
                metrics.ENGINE_STARTS.inc(slot.source.display_name, slot.purpose)
                return engine

            auto = self._spec_auto
            if auto is None or not spec_args:
                slot.engine, slot.speculating = start(spec_args), bool(spec_args)
            elif stale(slot.spec_decision, time.time(), auto.recheck):
                slot.engine, slot.spec_decision = auto.calibrate(start, spec_args)
                slot.speculating = slot.spec_decision.speculate
            else:
                slot.speculating = slot.spec_decision is not None and slot.spec_decision.speculate
                slot.engine = start(spec_args if slot.speculating else ())
            return slot.engine

    def _note_crash(self, slot: _Slot, engine: Engine) -> None:
        """Count a death; after CRASH_LIMIT in CRASH_WINDOW, stop restarting for CRASH_BACKOFF."""
        now = time.monotonic()
        slot.crash_times = [t for t in slot.crash_times if now - t < CRASH_WINDOW] + [now]
        if len(slot.crash_times) >= CRASH_LIMIT:
            slot.crash_times = []
            slot.failed_until = now + CRASH_BACKOFF
            slot.failure = (
                f"engine for {slot.source.display_name} died {CRASH_LIMIT} times within {CRASH_WINDOW:.0f}s: "
                f"{_tail(engine.log_path)}"
            )
            slot.failure_log = engine.log_path

    def _check_backoff(self, slot: _Slot) -> None:
        if slot.failed_until > time.monotonic():
            raise EngineCrashLoop(slot.failure, hint=f"not restarting it for a while; see {slot.failure_log}")

    def _evict_over_limit(self, keep: _Slot) -> None:
        with self._lock:
            loaded = [s for s in self._slots.values() if s.engine is not None and s is not keep]
            excess = len(loaded) + 1 - self._max_loaded
            idle = sorted((s for s in loaded if s.in_use == 0), key=lambda s: s.last_used)
        for slot in idle[: max(0, excess)]:
            self._unload_slot(slot, "evicted")

    def _unload_slot(self, slot: _Slot, reason: str = "requested", force: bool = False) -> bool:
        """Stop the slot's engine; a busy one is marked to go when its last answer ends (True: it will).

        ``evicted`` skips a busy slot (it was idle when chosen); ``shutdown`` or ``force`` stop it anyway.
        """
        with slot.lock:
            with self._lock:
                if slot.in_use and not force and reason != "shutdown":
                    if reason == "evicted" or slot.engine is None:
                        return False
                    slot.keep_alive = 0.0  # Ollama's runner: expires when its refcount reaches 0
                    if not slot.unload_reason:
                        slot.unload_reason, slot.unload_since = reason, time.monotonic()
                    self._kick.set()  # the reaper keeps an eye on it (UNLOAD_GRACE)
                    return True
                slot.unload_reason, slot.unload_since = "", 0.0
            if slot.engine is None:
                return False
            metrics.ENGINE_UNLOADS.inc(slot.source.display_name, slot.purpose, reason)
            slot.engine.stop()
            slot.engine = None
            return True

    def _reap_slot(self, slot: _Slot) -> None:
        """Unload an idle slot, re-checked under both locks so a request arriving now is not cut off."""
        with slot.lock:
            with self._lock:
                if slot.in_use or slot.keep_alive is None:
                    return
                if time.monotonic() - slot.last_used < slot.keep_alive:
                    return
                reason, slot.unload_reason, slot.unload_since = slot.unload_reason or "idle", "", 0.0
            if slot.engine is not None:
                metrics.ENGINE_UNLOADS.inc(slot.source.display_name, slot.purpose, reason)
                slot.engine.stop()
                slot.engine = None

    def unload(self, model: str) -> bool:
        """Unload ``model`` (Ollama's ``keep_alive: 0``): now when idle, else after the answers in flight."""
        return self.unload_source(self._resolve(model))

    def unload_source(self, source: ModelSource) -> bool:
        """Unload every engine (generation, embeddings) serving ``source``'s bytes (as ``unload``)."""
        with self._lock:
            slots = [s for k, s in self._slots.items() if k[:2] == source.key]
        unloaded = [self._unload_slot(s) for s in slots]
        return any(unloaded)

    def loaded(self) -> list[LoadedModel]:
        now_mono, now = time.monotonic(), time.time()
        out = []
        with self._lock:
            slots = list(self._slots.values())
        for slot in slots:
            engine = slot.engine
            if engine is None or engine.stopping:
                continue
            # busy: its keep-alive counts from the end of its answers, so not before now + keep_alive
            since = now_mono if slot.in_use else slot.last_used
            expires = None if slot.keep_alive is None else now + (since + slot.keep_alive - now_mono)
            out.append(
                LoadedModel(
                    name=slot.source.display_name, source=slot.source, pid=engine.pid, url=engine.url,
                    ctx=engine.ctx, expires_at=expires, in_use=slot.in_use, restarts=slot.restarts,
                    purpose=slot.purpose, engine=engine, speculation=_speculation(slot),
                )
            )
        return out

    def _reap_loop(self, interval: float) -> None:
        """Unload idle engines, bring back dead ones. Sleeps while no engine is loaded."""
        while not self._closed.is_set():
            with self._lock:
                slots = list(self._slots.values())
            loaded = any(s.engine is not None for s in slots)
            self._kick.wait(interval if loaded else None)
            self._kick.clear()
            if self._closed.is_set():
                return
            with self._lock:
                slots = list(self._slots.values())
            now = time.monotonic()
            for slot in slots:
                engine = slot.engine
                if engine is not None and slot.in_use and slot.unload_reason and \
                        now - slot.unload_since > UNLOAD_GRACE:
                    self._unload_slot(slot, slot.unload_reason, force=True)  # answers in flight too long
                    continue
                if engine is None or slot.in_use:
                    continue
                if slot.keep_alive is not None and now - slot.last_used >= slot.keep_alive:
                    self._reap_slot(slot)
                elif self._recheck_due(slot, now):
                    with contextlib.suppress(DXError):
                        self._recheck(slot)
                elif not engine.alive() and not engine.stopping and slot.failed_until <= now:
                    # died while idle: bring it back so the next request does not wait
                    with contextlib.suppress(DXError):
                        self._ensure_running(slot, None)

    def _recheck_due(self, slot: _Slot, now: float) -> bool:
        """--spec auto's decision is old and the model has been idle a while: measure again now."""
        auto = self._spec_auto
        return (auto is not None and slot.spec_decision is not None and slot.engine is not None
                and now - slot.last_used >= IDLE_BEFORE_RECHECK
                and stale(slot.spec_decision, time.time(), auto.recheck))

    def _recheck(self, slot: _Slot) -> None:
        """Restart the idle engine through a fresh calibration; a request arriving meanwhile waits for it."""
        with slot.lock:
            with self._lock:
                if slot.in_use or slot.engine is None:
                    return
            engine, slot.engine = slot.engine, None
            engine.stop()
        # outside the lock (not reentrant); a request that came first has calibrated already
        self._ensure_running(slot, engine.ctx, engine.load_args)

    def close(self) -> None:
        """Stop every engine (on shutdown)."""
        self._closed.set()
        self._kick.set()
        with self._lock:
            slots = list(self._slots.values())
        for slot in slots:
            self._unload_slot(slot, "shutdown")


def _speculation(slot: _Slot) -> dict | None:
    """What /api/ps and /metrics show about a slot's speculation."""
    if slot.spec_decision is not None:
        return {**slot.spec_decision.as_json(), "speculating": slot.speculating}
    if slot.speculating:
        return {"mode": "forced", "speculating": True}
    return None


def _for_purpose(args: tuple[str, ...], purpose: str) -> tuple[str, ...]:
    """Load flags for an engine of ``purpose``: an embedding or rerank engine keeps its batch = context
    (a whole input in one micro-batch), so a request's ``-b``/``-ub`` apply to generation only."""
    if purpose == GENERATE:
        return args
    out: list[str] = []
    it = iter(args)
    for flag in it:
        if flag in ("-b", "-ub"):
            next(it, None)
            continue
        out.append(flag)
    return tuple(out)
