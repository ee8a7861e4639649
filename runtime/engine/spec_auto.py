"""``--spec auto``: speculate only where it measures faster than plain decoding, on this machine.

A draft model pays when drafting is cheap against the target's decode and most
drafts are accepted; on a small compute-bound CPU target it can lose badly (the
measured SmolLM2 pair: 0.37x of plain decoding at acceptance 0.96). Whether it
wins depends on the pair, the machine and its load, so DX measures instead of
assuming.

The pinned llama-server cannot switch speculation per request: its per-request
``speculative.*`` fields are compiled out (``#if 0`` in tools/server/server-schema.cpp),
and a slot drafts whenever the server has a speculative context. So the comparison
is a short calibration when the engine loads: the same greedy prompt decoded by an
engine started with the draft and by one started without, the engine's own
``timings.predicted_per_second`` compared (median of ``runs`` different prompts), and the engine that
won is the one that serves. The decision is re-checked when it is older than
``recheck`` seconds: at the next load, or by the reaper while the model is idle, so
the cost (two engine starts and a few short answers) is bounded to once per
``recheck`` and never cuts an answer off.

:func:`decide` and :func:`stale` are pure; :class:`AutoSpec` runs the calibration.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dx.errors import EngineUnavailable
from dxverify.errors import DXError

#: speculation must be this much faster than plain decoding to be kept: a tie keeps the simpler, cheaper engine
MARGIN = 0.05
RECHECK = 3600.0  # seconds a decision stands before it is measured again
IDLE_BEFORE_RECHECK = 30.0  # the reaper re-measures only a model idle this long
#: one prompt per run, each different: n-gram speculation remembers earlier answers, and a repeated prompt
#: would be drafted from the last run's answer (acceptance 1.00 on the second run, a win no user would see)
CALIBRATION_PROMPTS = ("Write a short story about a robot who learns to paint.",
                       "Explain how a bicycle works, step by step.",
                       "List ten fruits and one fact about each.")
CALIBRATION_TOKENS = 64
CALIBRATION_RUNS = 2
#: seconds one calibration answer may take; past it the side is "not measured" and plain decoding serves
#: (a loaded machine must not hold a model's load for minutes: on a 2-core box at load 20 a speculating
#: SmolLM2 decoded 0.2 tok/s)
CALIBRATION_TIMEOUT = 60.0


@dataclass(frozen=True)
class Rates:
    """One side of a calibration: decode tokens/s (the engine's own timing) and the drafts it made."""

    decode_tps: float
    tokens: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


@dataclass(frozen=True)
class Decision:
    """What auto chose and the numbers it chose from (shown by /api/ps, /metrics, dx ps and dx top)."""

    speculate: bool
    on_tps: float
    off_tps: float
    acceptance: float | None
    at: float  # epoch seconds of the measurement
    reason: str

    @property
    def ratio(self) -> float:
        """Speculation's decode speed over plain decoding's (0 when plain decoding measured nothing)."""
        return self.on_tps / self.off_tps if self.off_tps > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        from datetime import datetime, timezone

        return {
            "mode": "auto", "speculating": self.speculate, "decode_tps_on": round(self.on_tps, 2),
            "decode_tps_off": round(self.off_tps, 2), "ratio": round(self.ratio, 3),
            "acceptance": None if self.acceptance is None else round(self.acceptance, 3),
            "measured_at": datetime.fromtimestamp(self.at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "reason": self.reason,
        }


def decide(on: Rates, off: Rates, *, margin: float = MARGIN, now: float | None = None) -> Decision:
    """Keep speculation only when it decoded at least ``1 + margin`` times plain decoding's speed."""
    at = time.time() if now is None else now
    if off.decode_tps <= 0:
        return Decision(on.decode_tps > 0, on.decode_tps, off.decode_tps, on.acceptance, at,
                        "plain decoding measured nothing")
    ratio = on.decode_tps / off.decode_tps
    speculate = ratio >= 1.0 + margin
    acc = "" if on.acceptance is None else f", acceptance {on.acceptance:.2f}"
    word = "faster" if speculate else ("not enough faster" if ratio >= 1.0 else "slower")
    return Decision(speculate, on.decode_tps, off.decode_tps, on.acceptance, at,
                    f"speculation measured {ratio:.2f}x of plain decoding{acc}: {word}")


def failed(why: str, *, now: float | None = None) -> Decision:
    """The decision when the speculating engine could not be measured: plain decoding."""
    return Decision(False, 0.0, 0.0, None, time.time() if now is None else now, why)


def stale(decision: Decision | None, now: float, recheck: float = RECHECK) -> bool:
    """A decision is measured again when there is none or it is ``recheck`` seconds old."""
    return decision is None or now - decision.at >= recheck


def _chat(engine: Any, prompt: str, tokens: int, timeout: float) -> dict[str, Any]:
    """One greedy chat straight to the engine (its own key); the answer's ``timings``. Any failure to get
    them is an OSError."""
    from dx.engine.relay import engine_json  # not at start: http.client comes with the first engine request

    try:
        status, answer = engine_json(engine, "/v1/chat/completions", {
            "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "temperature": 0,
            "top_k": 1, "seed": 1, "cache_prompt": False}, timeout=timeout)
    except EngineUnavailable as e:
        if isinstance(e.__cause__, TimeoutError):
            raise OSError(f"no answer within {timeout:g} s") from e
        raise OSError(str(e)) from e
    if status != 200:
        raise OSError(f"the engine answered HTTP {status}")
    timings = answer.get("timings")
    if not isinstance(timings, dict):
        raise OSError("the engine's answer has no timings")
    return timings


def _median(values: list[float]) -> float:
    """The median (the runtime bundle leaves out ``statistics``: builder/bundle's --nofollow list)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def measure(engine: Any, *, prompts: Sequence[str] = CALIBRATION_PROMPTS, tokens: int = CALIBRATION_TOKENS,
            runs: int = CALIBRATION_RUNS, timeout: float = 300.0) -> Rates:
    """Decode ``runs`` of the calibration prompts after a short warm-up: median tokens/s, drafts summed."""
    _chat(engine, "Hi", 4, timeout)  # first-request costs (graph build, caches) out of the figures
    rows = [_chat(engine, prompts[i % len(prompts)], tokens, timeout) for i in range(max(1, runs))]
    return Rates(
        decode_tps=_median([float(r.get("predicted_per_second") or 0.0) for r in rows]),
        tokens=int(_median([int(r.get("predicted_n") or 0) for r in rows])),
        drafted=sum(int(r.get("draft_n") or 0) for r in rows),
        accepted=sum(int(r.get("draft_n_accepted") or 0) for r in rows),
    )


@dataclass(frozen=True)
class AutoSpec:
    """How ``--spec auto`` calibrates: the prompt, its length, how often, and the margin to win by."""

    recheck: float = RECHECK
    margin: float = MARGIN
    prompts: tuple[str, ...] = CALIBRATION_PROMPTS
    tokens: int = CALIBRATION_TOKENS
    runs: int = CALIBRATION_RUNS
    timeout: float = CALIBRATION_TIMEOUT

    def calibrate(self, start: Callable[[Sequence[str]], Any], spec_args: Sequence[str]) -> tuple[Any, Decision]:
        """Start an engine with ``spec_args`` and one without, time both, keep the winner running.

        ``start(args)`` starts an engine with those extra arguments. Plain decoding is
        measured last, so where speculation loses (the usual CPU case) the engine that
        serves is the one just measured: two starts, not three.
        """
        try:
            engine = start(spec_args)
        except DXError as e:  # a draft the engine cannot run: serve without it, and say why
            return start(()), failed(f"the speculating engine did not start: {e.message}")
        try:
            on = measure(engine, prompts=self.prompts, tokens=self.tokens, runs=self.runs, timeout=self.timeout)
        except OSError as e:
            on = None
            why = f"the speculating engine could not be measured: {e}"
        finally:
            engine.stop()
        plain = start(())
        if on is None:
            return plain, failed(why)
        try:
            off = measure(plain, prompts=self.prompts, tokens=self.tokens, runs=self.runs, timeout=self.timeout)
        except OSError as e:
            return plain, failed(f"plain decoding could not be measured: {e}")
        decision = decide(on, off, margin=self.margin)
        if not decision.speculate:
            return plain, decision
        plain.stop()
        return start(spec_args), decision


def remembered(auto: AutoSpec, path: Path, key: str, start: Callable[[Sequence[str]], Any],
               spec_args: Sequence[str], *, now: float | None = None) -> tuple[Any, Decision, bool]:
    """``dx run``'s ``--spec auto``: (the engine, the decision, whether it was remembered).

    A one-shot command cannot pay a calibration at every start, so the decision measured
    for ``key`` (the pair, the engine, the machine) is kept in ``path`` and reused while it
    is younger than ``auto.recheck``; then it is measured again. A file that cannot be read
    or written costs a calibration, never the run.
    """
    at = time.time() if now is None else now
    saved = _read(path).get(key)
    try:  # a hand-edited or foreign entry (missing keys, wrong types) is measured again, never a traceback
        decision = Decision(**saved) if isinstance(saved, dict) else None
        fresh = decision is not None and not stale(decision, at, auto.recheck) and decision.off_tps > 0
    except (TypeError, ValueError):
        decision, fresh = None, False
    if decision is not None and fresh:
        return start(spec_args if decision.speculate else ()), decision, True
    engine, decision = auto.calibrate(start, spec_args)
    if decision.off_tps > 0:  # a side that could not be measured (a loaded moment) is measured next time
        _write(path, {**_read(path), key: asdict(decision)})
    return engine, decision, False


def _read(path: Path) -> dict[str, Any]:
    import json

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write(path: Path, doc: dict[str, Any]) -> None:
    """Whole or not at all: a temporary file renamed over the old one."""
    import json
    import os

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
