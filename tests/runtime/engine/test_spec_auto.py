"""``--spec auto``: the decision (pure), how it shows, and, with the real engine and a real pair, that a
draft which loses on this machine is measured, reported and turned off.

The pair is SmolLM2-135M with itself as the draft (same vocabulary; a draft as big as
its target, so drafting costs what it saves and more): on a CPU it measures well below
plain decoding. The integration test asserts on DX's decision and on the rates it
reports, which must agree with each other, never on a hard-coded speed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.serve_harness import engine_binary, start_dx

from dx.cli.models import speculation_summary
from dx.cli.top import ModelRow, _accept
from dx.engine.spec_auto import AutoSpec, Decision, Rates, decide, failed, stale
from dx.engine.speculative import plan
from dx.models.source import ModelSource
from dxverify.errors import ConfigurationError

MODEL = "smollm2"


# ------------------------------------------------------------------ the decision (pure)
def test_speculation_is_kept_only_when_it_wins_by_the_margin() -> None:
    off = Rates(decode_tps=90.0, tokens=64)
    loses = decide(Rates(32.0, 64, drafted=100, accepted=96), off, now=1000.0)
    assert not loses.speculate and loses.ratio == pytest.approx(32 / 90) and loses.acceptance == 0.96
    assert "0.36x" in loses.reason and "slower" in loses.reason and loses.at == 1000.0
    tie = decide(Rates(92.0, 64, 10, 5), off, margin=0.05)  # 1.02x: not worth a second model's cost
    assert not tie.speculate and "not enough faster" in tie.reason
    wins = decide(Rates(180.0, 64, 100, 90), off, margin=0.05)
    assert wins.speculate and wins.ratio == pytest.approx(2.0) and "faster" in wins.reason
    assert decide(Rates(94.5, 64), off, margin=0.05).speculate  # exactly at the margin: kept
    assert not decide(Rates(0.0), Rates(0.0)).speculate  # nothing measured on either side: plain decoding


def test_a_decision_is_remeasured_when_missing_or_old() -> None:
    d = decide(Rates(30.0), Rates(90.0), now=1000.0)
    assert stale(None, 1000.0)
    assert not stale(d, 1000.0 + 3599.0, recheck=3600.0)
    assert stale(d, 1000.0 + 3600.0, recheck=3600.0)


def test_the_decision_as_ps_and_top_show_it() -> None:
    d = decide(Rates(31.94, 64, drafted=50, accepted=48), Rates(90.0, 64), now=0.0)
    doc = d.as_json()
    assert doc == {"mode": "auto", "speculating": False, "decode_tps_on": 31.94, "decode_tps_off": 90.0,
                   "ratio": 0.355, "acceptance": 0.96, "measured_at": "1970-01-01T00:00:00Z", "reason": d.reason}
    line = speculation_summary(doc)
    assert line.startswith("off (auto: 0.35x of plain decoding, 31.9 vs 90.0 tok/s, acceptance 0.96"), line
    assert speculation_summary({"mode": "forced", "speculating": True}) == "on (forced)"
    row = ModelRow("m", 0, 1, None, None, 0.0, drafted=0.0, accepted=0.0, spec_active=0.0, spec_speedup=0.355)
    assert _accept(row) == "off (auto 0.35x)"
    forced = ModelRow("m", 0, 1, None, None, 0.0, drafted=40.0, accepted=30.0, spec_active=1.0)
    assert _accept(forced) == "on 75% of 40"
    assert _accept(ModelRow("m", 0, 1, None, None, 0.0, drafted=0.0, accepted=0.0)) == "-"
    assert failed("why", now=5.0) == Decision(False, 0.0, 0.0, None, 5.0, "why")
    # not measured: no "0.00x ... 0.0 vs 0.0 tok/s", the reason
    why = "the speculating engine could not be measured: no answer within 60 s"
    assert speculation_summary(failed(why, now=0.0).as_json()) == f"off (auto: {why}, 1970-01-01T00:00:00Z)"


def test_an_engine_that_does_not_answer_in_time_is_not_measured() -> None:
    """A calibration answer past AutoSpec.timeout is an OSError naming the timeout (a listener that
    accepts and never answers, on loopback, stands for an engine too loaded to answer)."""
    import socket
    from types import SimpleNamespace

    import dx.engine.spec_auto as spec_auto

    with socket.create_server(("127.0.0.1", 0)) as silent:
        engine = SimpleNamespace(port=silent.getsockname()[1], api_key="k")
        with pytest.raises(OSError, match=r"^no answer within 0.5 s$"):
            spec_auto._chat(engine, "Hi", 4, 0.5)


def test_auto_is_the_default_with_a_draft_and_ngram_only_when_forced() -> None:
    draft = ModelSource(Path("/m/d.gguf"))
    assert plan(None, draft).auto and plan("auto", draft).auto and plan(None, draft).mode == "draft"
    assert not plan("draft", draft).auto and not plan("on", draft).auto  # forced
    assert plan("on", draft).mode == "draft" and plan("on", None).mode == "ngram"  # on: the draft, else n-grams
    assert plan(None, None).mode == "none" and plan("auto", None).mode == "none"  # auto never picks n-grams
    assert plan("off", None).engine_args() == [] and plan("ngram", None).mode == "ngram"
    with pytest.raises(ConfigurationError, match="contradict"):
        plan("off", draft)


@pytest.mark.parametrize(("mode", "created", "other"), [
    (None, "own", "none"), ("auto", "own", "none"), ("on", "own", "ngram"), ("off", "none", "none"),
    ("none", "none", "none"), ("ngram", "ngram", "ngram")])
def test_a_created_models_own_draft_is_speculation_like_any_other(monkeypatch: pytest.MonkeyPatch, mode: str | None,
                                                                  created: str, other: str) -> None:
    """A Modelfile DRAFT is not forced on the engine: by default it is auto's to time (the manager and dx run
    calibrate whatever engine_args_for gives), `on` forces it, off/none and a forced kind leave it out."""
    from dx.engine.process import EMBED, GENERATE
    from dx.engine.speculative import engine_args_for
    from dx.models import defaults

    own = defaults.ModelDefaults(params={"draft_num_predict": 4}, draft="/store/blobs/sha256-dd")
    monkeypatch.setattr(defaults, "for_source", lambda s: own if str(s.path) == "/m/created" else defaults.NONE)
    spec = plan(mode, None)
    args = engine_args_for(None, spec)  # dx serve of the store: no target
    want = {"own": own.draft_args(), "ngram": ["--spec-type", "ngram-mod"], "none": []}
    assert list(args(ModelSource(Path("/m/created")), GENERATE)) == want[created]
    assert list(args(ModelSource(Path("/m/plain")), GENERATE)) == want[other]
    assert list(args(ModelSource(Path("/m/created")), EMBED)) == []
    assert spec.auto == (mode in (None, "auto"))  # the server times the draft before using it


class _Engine:
    """A stand-in engine for the calibration's bookkeeping: which engines start, stop and serve."""

    def __init__(self, args: tuple[str, ...], log: list[str]) -> None:
        self.args, self.log = args, log
        log.append(f"start {' '.join(args) or 'plain'}")

    def stop(self) -> None:
        self.log.append(f"stop {' '.join(self.args) or 'plain'}")


@pytest.mark.parametrize("on_tps,kept", [(30.0, "plain"), (200.0, "--spec")])
def test_calibration_keeps_the_engine_that_won(monkeypatch: pytest.MonkeyPatch, on_tps: float, kept: str) -> None:
    """Plain decoding is measured last, so a losing draft costs two starts; a winning one a third."""
    import dx.engine.spec_auto as spec_auto

    log: list[str] = []
    monkeypatch.setattr(spec_auto, "measure", lambda engine, **_: Rates(on_tps if engine.args else 90.0))
    engine, decision = AutoSpec().calibrate(lambda args: _Engine(tuple(args), log), ["--spec"])
    assert decision.speculate == (kept == "--spec") and (" ".join(engine.args) or "plain") == kept
    expected = ["start --spec", "stop --spec", "start plain"]
    assert log == (expected if kept == "plain" else [*expected, "stop plain", "start --spec"])


def test_a_side_that_cannot_be_measured_leaves_plain_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A speculating engine that times out (a loaded machine) costs its start, and plain decoding serves."""
    import dx.engine.spec_auto as spec_auto

    def slow(engine: _Engine, **_: object) -> Rates:
        if engine.args:
            raise TimeoutError("timed out")
        return Rates(90.0)

    log: list[str] = []
    monkeypatch.setattr(spec_auto, "measure", slow)
    engine, decision = AutoSpec().calibrate(lambda args: _Engine(tuple(args), log), ["--spec"])
    assert engine.args == () and not decision.speculate and decision.on_tps == 0.0
    assert decision.reason == "the speculating engine could not be measured: timed out"
    assert log == ["start --spec", "stop --spec", "start plain"]


# ------------------------------------------------------------------ the real engine, a real pair
def _value(metrics: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", metrics, re.MULTILINE)
    assert m is not None, f"{name}{{{want}}} not in /metrics"
    return float(m.group(1))


@pytest.mark.integration
def test_manager_calibrates_a_losing_pair_off(request: pytest.FixtureRequest, smollm2_gguf: Path,
                                              tmp_path: Path) -> None:
    """DX's EngineManager with AutoSpec, the real engine and SmolLM2 drafting for itself: measured, turned off.

    One engine thread and 32-token answers keep the calibration inside its timeout on a shared machine."""
    from dx.engine.manager import EngineManager
    from dx.engine.speculative import Speculation

    source = ModelSource(smollm2_gguf)
    spec_args = Speculation("draft", ModelSource(smollm2_gguf)).engine_args()
    manager = EngineManager(lambda _name: source, binary=engine_binary(request), log_dir=tmp_path, parallel=1,
                            ctx=1024, extra_args=["-t", "1"], model_args=lambda _s, _p: spec_args,
                            spec_auto=AutoSpec(tokens=32, timeout=300.0))
    try:
        engine = manager.get(MODEL)
        (loaded,) = [lm for lm in manager.loaded() if lm.engine is engine]
        spec = loaded.speculation
        assert spec is not None and spec["mode"] == "auto", spec
        # both sides measured, and speculation off because the draft was not faster by the margin
        assert spec["decode_tps_on"] > 0 and spec["decode_tps_off"] > 0, spec["reason"]
        assert spec["ratio"] == pytest.approx(spec["decode_tps_on"] / spec["decode_tps_off"], abs=0.002)
        assert spec["speculating"] is (spec["ratio"] >= 1.05), spec
        assert spec["speculating"] is False, spec  # a draft as big as its target never wins on a CPU
        assert spec["acceptance"] is not None and spec["acceptance"] > 0.5, spec  # it did draft, and well
        said = re.search(r"measured (\d+\.\d\d)x of plain decoding", spec["reason"])  # from the unrounded rates
        assert said and float(said[1]) == pytest.approx(spec["ratio"], abs=0.006), spec
        argv = Path(f"/proc/{engine.pid}/cmdline").read_bytes().split(b"\0")
        assert b"--spec-type" not in argv, argv  # the engine kept is the plain one
    finally:
        manager.close()


@pytest.mark.integration
def test_a_draft_that_loses_is_measured_and_turned_off(request: pytest.FixtureRequest, smollm2_gguf: Path,
                                                        tmp_path: Path) -> None:
    from dx.models.catalog import Store

    Store(root=tmp_path / "home", ollama_dir=False).import_file(smollm2_gguf, MODEL)
    server = start_dx(tmp_path, "--ctx", "1024", "--parallel", "1", "--draft", MODEL,
                      engine=engine_binary(request), model=MODEL, timeout=300)
    try:
        assert any("--spec auto" in line for line in server.lines), server.lines
        r = httpx.post(f"{server.url}/api/generate", headers=server.headers, timeout=600, json={
            "model": MODEL, "prompt": "Count to five.", "stream": False,
            "options": {"temperature": 0, "num_predict": 16}})
        assert r.status_code == 200, r.text
        assert "draft_n" not in r.text  # the engine that answers does not speculate

        ps = httpx.get(f"{server.url}/api/ps", headers=server.headers, timeout=30).json()
        spec: dict[str, Any] = ps["models"][0]["dx_speculation"]
        # off, measured (test_manager_calibrates_a_losing_pair_off checks the rates themselves), or, on a
        # machine so loaded that a calibration answer takes over AutoSpec.timeout, not measured: off too
        assert spec["mode"] == "auto" and spec["speculating"] is False, spec
        assert ("of plain decoding" in spec["reason"]) or ("could not be measured" in spec["reason"]), spec

        (pid,) = server.children()  # the engine serving is the plain one: the calibration's others are gone
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"--spec-type" not in argv and b"--spec-draft-model" not in argv, argv

        metrics = httpx.get(f"{server.url}/metrics", headers=server.headers, timeout=30).text
        name = ps["models"][0]["name"]  # smollm2:latest
        assert _value(metrics, "dx_speculation_active", model=name) == 0
        assert _value(metrics, "dx_speculation_speedup", model=name) == pytest.approx(spec["ratio"])
        assert _value(metrics, "dx_speculation_decode_tokens_per_second", model=name, speculation="off") == \
            pytest.approx(spec["decode_tps_off"])

        env = {**{k: v for k, v in os.environ.items() if k != "DX_HOST"}, "DX_HOME": str(server.home),
               "DX_API_KEY": server.api_key}
        out = subprocess.run([sys.executable, "-m", "dx", "ps", "--host", server.url], capture_output=True,
                             text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        shown = (rf"{spec['ratio']:.2f}x of plain decoding" if spec["decode_tps_off"]
                 else re.escape(spec["reason"]))  # not measured: the reason itself
        assert re.search(rf"speculation +off \(auto: {shown}", out.stdout), out.stdout
    finally:
        server.stop()


def test_dx_run_remembers_a_measured_decision_until_it_is_stale(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    """dx run keeps the decision per pair and engine in a file: reused while fresh, measured again when
    old, not kept when a side could not be measured, and a broken file only costs a calibration."""
    import dx.engine.spec_auto as spec_auto

    rates = {"on": 30.0}

    def measure(engine: _Engine, **_: object) -> Rates:
        if engine.args and rates["on"] < 0:
            raise OSError("no answer within 60 s")
        return Rates(rates["on"] if engine.args else 90.0)

    monkeypatch.setattr(spec_auto, "measure", measure)
    path, log = tmp_path / "home" / "spec-auto.json", []
    auto = AutoSpec(recheck=100.0)

    def remember(now: float, key: str = "pair") -> tuple[_Engine, Decision, bool]:
        return spec_auto.remembered(auto, path, key, lambda args: _Engine(tuple(args), log), ["--spec"], now=now)

    t0 = time.time()  # a calibration stamps its decision with the clock
    engine, d, known = remember(t0)
    assert not known and not d.speculate and engine.args == () and len(log) == 3  # measured: two starts
    assert json.loads(path.read_text())["pair"]["off_tps"] == 90.0
    log.clear()
    rates["on"] = 200.0  # faster now, but the decision stands until it is stale
    engine, d2, known = remember(t0 + 99.0)
    assert known and d2 == d and log == ["start plain"]
    log.clear()
    engine, d3, known = remember(t0 + 100.5)  # stale: measured again, and now it wins
    assert not known and d3.speculate and engine.args == ("--spec",)
    _engine, _d, known = remember(t0, key="other pair")  # another pair is measured on its own
    assert not known and set(json.loads(path.read_text())) == {"pair", "other pair"}

    broken = {**json.loads(path.read_text())["pair"], "at": "yesterday", "off_tps": "fast"}
    path.write_text(json.dumps({"pair": broken}))  # readable JSON, wrong types: measured again, no traceback
    _engine, _d, known = remember(t0)
    assert not known and json.loads(path.read_text())["pair"]["at"] != "yesterday"

    path.write_text("{not json")
    rates["on"] = -1.0  # and this time the speculating side cannot be measured
    engine, d4, known = remember(t0)
    assert not known and not d4.speculate and "could not be measured" in d4.reason
    assert path.read_text() == "{not json"  # nothing measured, nothing written
    assert not list(path.parent.glob(".*.tmp"))
