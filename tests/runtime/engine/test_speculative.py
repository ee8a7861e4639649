"""Speculative decoding configured by DX (`--draft`, `--spec ngram`), against the real cpu engine and SmolLM2.

Unit tests pin the planning (options -> the pinned engine's flags); the integration
tests prove what matters: greedy output is the same with and without speculation,
the engine reports drafted tokens and they reach the openai and Ollama APIs, a
draft inside a larger file (``FILE#offset=N``) is mapped in place, and an
incompatible pair is refused with one line before any engine starts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.serve_harness import DXServer, dx_env, engine_binary, start_dx

from dx.engine.speculative import Speculation, plan
from dx.models.source import ModelSource
from dxverify.errors import ConfigurationError

GREEDY = {"temperature": 0, "seed": 1, "max_tokens": 48}
PROMPTS = ["Count from 1 to 20, separated by commas.", "Write a short poem about the sea."]
# SmolLM2-135M copies this back nearly verbatim: n-grams of the prompt predict the answer.
ECHO = ("Copy this text exactly:\nAlice went to the market to buy apples, bread, cheese and milk for the picnic on "
        "Sunday afternoon with her friends from school. They sat under the old oak tree near the river and talked "
        "about their plans for the summer holidays.")


# ------------------------------------------------------------------ planning (pure)
def test_draft_mode_always_names_the_type() -> None:
    """`-md` alone does nothing on the pinned engine (--spec-type defaults to none): DX always sets the type."""
    draft = ModelSource(Path("/m/draft.gguf"))
    assert plan(None, draft).engine_args() == ["--spec-type", "draft-simple", "--spec-draft-model", "/m/draft.gguf"]
    embedded = ModelSource(Path("/bin/dx-smol"), offset=65536, length=10)
    assert Speculation("draft", embedded, 8, 2).engine_args() == [
        "--spec-type", "draft-simple", "--spec-draft-model", "/bin/dx-smol#offset=65536",
        "--spec-draft-n-max", "8", "--spec-draft-n-min", "2"]


def test_ngram_mode_needs_no_draft() -> None:
    assert plan("ngram", None).engine_args() == ["--spec-type", "ngram-mod"]
    assert plan("ngram", None, n_max=32, n_min=4).engine_args() == [
        "--spec-type", "ngram-mod", "--spec-ngram-mod-n-max", "32", "--spec-ngram-mod-n-min", "4"]


def test_defaults_and_contradictions() -> None:
    draft, embedded = ModelSource(Path("/m/d.gguf")), ModelSource(Path("/bin/dx"), offset=1 << 16)
    assert plan(None, None).engine_args() == []
    assert plan(None, None, embedded_draft=embedded).draft == embedded  # an embedded draft is on by default
    assert plan(None, draft, embedded_draft=embedded).draft == draft  # --draft wins over it
    assert plan("none", None, embedded_draft=embedded).engine_args() == []  # --spec none turns it off
    for args, kw, words in [
        (("none", draft), {}, "contradict"),
        (("ngram", draft), {}, "takes no --draft"),
        (("draft", None), {}, "needs a draft model"),
        (("draft", draft), {"n_max": 2, "n_min": 5}, "--draft-min 5 is larger than --draft-max 2"),
    ]:
        with pytest.raises(ConfigurationError, match=words):
            plan(*args, **kw)  # type: ignore[arg-type]


def test_a_draft_goes_to_its_target_only(smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The EngineManager asks per model and purpose: the draft pairs with one model, n-grams suit every one."""
    from dx.engine.process import EMBED, GENERATE
    from dx.engine.speculative import engine_args_for

    monkeypatch.setenv("DX_HOME", str(tmp_path))
    target, other = ModelSource(smollm2_gguf), ModelSource(tmp_path / "other.gguf")
    drafted = engine_args_for(target, plan(None, ModelSource(smollm2_gguf)))
    assert list(drafted(target, GENERATE))[:2] == ["--spec-type", "draft-simple"]
    assert drafted(other, GENERATE) == () and drafted(target, EMBED) == ()
    ngram = engine_args_for(None, plan("ngram", None))
    assert list(ngram(other, GENERATE)) == ["--spec-type", "ngram-mod"] and ngram(other, EMBED) == ()


def test_the_flags_are_the_pinned_engines(cpu_engine: Path) -> None:
    """Every flag and type DX emits is one the pinned llama-server documents (no guessed flag)."""
    helptext = subprocess.run([str(cpu_engine / "bin" / "llama-server"), "--help"], capture_output=True, text=True,
                              timeout=60).stdout
    argv = [*Speculation("draft", ModelSource(Path("/d")), 4, 1).engine_args(),
            *Speculation("ngram", None, 4, 1).engine_args()]
    flags = {a for a in argv if a.startswith("--")}
    assert flags == {"--spec-type", "--spec-draft-model", "--spec-draft-n-max", "--spec-draft-n-min",
                     "--spec-ngram-mod-n-max", "--spec-ngram-mod-n-min"}
    for flag in flags:
        assert f"{flag} " in helptext or f"{flag}," in helptext, flag
    types_line = next(line for line in helptext.splitlines() if line.startswith("--spec-type"))
    assert "draft-simple" in types_line and "ngram-mod" in types_line


# ------------------------------------------------------------------ helpers
def spm_gguf(path: Path) -> Path:
    """A small valid GGUF with an SPM (llama) tokenizer: SmolLM2's is BPE, so the pair is incompatible."""
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_name("other-family")
    w.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>", *[f"tok{i}" for i in range(61)]]
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([1] * len(tokens))
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def engine_argv(home: Path) -> str:
    """The first line of the (one) generation engine's log: ``+ llama-server ...`` as DX started it."""
    logs = sorted(p for p in (home / "logs").glob("engine-*.log") if "-embed" not in p.name)
    assert logs, f"no engine log in {home / 'logs'}"
    return logs[-1].read_text(errors="replace").splitlines()[0]


def chat(server: DXServer, prompt: str, **extra: object) -> dict:
    """One greedy chat over the OpenAI API (top_k 1 on top of temperature 0)."""
    client = server.openai(timeout=300)
    body = {**GREEDY, **extra}
    r = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": prompt}],
                                       extra_body={"top_k": 1}, **body)  # type: ignore[call-overload]
    return {"text": r.choices[0].message.content, "timings": (r.model_extra or {}).get("timings") or {}}


@pytest.fixture(scope="module")
def servers(request: pytest.FixtureRequest, smollm2_gguf: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, DXServer]]:
    """Three `dx serve` of the same SmolLM2: no speculation, SmolLM2 as its own draft, and n-grams."""
    from dx.models.catalog import Store

    engine = engine_binary(request)
    started: dict[str, DXServer] = {}
    try:
        # --spec draft: forced (the default, --spec auto, would measure this pair slower here and turn it off)
        for name, args in {"plain": (), "draft": ("--draft", "smollm2", "--spec", "draft"),
                           "ngram": ("--spec", "ngram")}.items():
            tmp = tmp_path_factory.mktemp(f"spec-{name}")
            Store(root=tmp / "home", ollama_dir=False).import_file(smollm2_gguf, "smollm2")
            started[name] = start_dx(tmp, "--ctx", "2048", "--parallel", "1", *args, engine=engine,
                                     model="smollm2", timeout=120)
        yield started
    finally:
        for server in started.values():
            server.stop()


# ------------------------------------------------------------------ dx serve
@pytest.mark.integration
def test_draft_greedy_output_is_identical_and_drafts_are_reported(servers: dict[str, DXServer]) -> None:
    assert any("speculative decoding with draft" in line for line in servers["draft"].lines)
    argv = engine_argv(servers["draft"].home)
    assert "--spec-type draft-simple --spec-draft-model " in argv, argv
    assert "--spec-type" not in engine_argv(servers["plain"].home)
    for prompt in PROMPTS:
        plain, drafted = chat(servers["plain"], prompt), chat(servers["draft"], prompt)
        assert drafted["text"] == plain["text"], prompt
        assert "draft_n" not in plain["timings"]
        # the openai client keeps the engine's timings as they came (an extra field, passed through by dx)
        t = drafted["timings"]
        assert t["draft_n"] > 0 and 0 < t["draft_n_accepted"] <= t["draft_n"], t


@pytest.mark.integration
def test_ngram_greedy_output_is_identical(servers: dict[str, DXServer]) -> None:
    argv = engine_argv(servers["ngram"].home)
    assert "--spec-type ngram-mod" in argv and "--spec-draft-model" not in argv, argv
    plain, ngram = chat(servers["plain"], ECHO, max_tokens=96), chat(servers["ngram"], ECHO, max_tokens=96)
    assert ngram["text"] == plain["text"]
    assert "Alice went to the market" in ngram["text"]
    assert ngram["timings"].get("draft_n", 0) > 0, ngram["timings"]


@pytest.mark.integration
def test_ollama_final_chunk_carries_the_acceptance_numbers(servers: dict[str, DXServer]) -> None:
    server = servers["draft"]
    options = {"temperature": 0, "seed": 1, "top_k": 1, "num_predict": 48}
    body = {"model": "smollm2", "messages": [{"role": "user", "content": PROMPTS[0]}], "options": options}
    whole = httpx.post(f"{server.url}/api/chat", headers=server.headers, json={**body, "stream": False},
                       timeout=300).json()
    assert whole["done"] is True and whole["draft_n"] > 0 and 0 < whole["draft_n_accepted"] <= whole["draft_n"]
    with httpx.stream("POST", f"{server.url}/api/chat", headers=server.headers, json=body, timeout=300) as r:
        chunks = [json.loads(line) for line in r.iter_lines() if line.strip()]
    assert all("draft_n" not in c for c in chunks[:-1])
    assert chunks[-1]["done"] is True and chunks[-1]["draft_n"] > 0, chunks[-1]
    # the real ollama client reads these answers; its pydantic models drop fields Ollama lacks, so it
    # sees the same text (the acceptance numbers are on the wire, for clients that read the JSON)
    client = server.ollama(timeout=300)
    assert client.chat(**body).message.content == whole["message"]["content"]
    parts = list(client.chat(**body, stream=True))
    assert parts[-1].done and "".join(p.message.content or "" for p in parts) == whole["message"]["content"]


@pytest.mark.integration
def test_incompatible_pair_is_refused_before_any_engine(request: pytest.FixtureRequest, smollm2_gguf: Path,
                                                        tmp_path: Path) -> None:
    other = spm_gguf(tmp_path / "other.gguf")
    env = dx_env(tmp_path / "home", engine_binary(request))
    for cmd in (["serve", str(smollm2_gguf), "--port", "0", "--draft", str(other)],
                ["run", str(smollm2_gguf), "hello", "--draft", str(other)]):
        proc = subprocess.run([sys.executable, "-m", "dx", *cmd], env=env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dx: error:"), proc.stderr
        assert "not compatible" in lines[0] and "vocabulary type differs (bpe vs spm)" in lines[0], lines[0]
        assert "dx: serving" not in proc.stdout
        assert not list((tmp_path / "home").glob("logs/engine-*.log"))  # no engine was ever started


# ------------------------------------------------------------------ dx run, and a draft at an offset
@pytest.mark.integration
def test_dx_run_with_a_draft_answers_the_same(request: pytest.FixtureRequest, smollm2_gguf: Path,
                                              tmp_path: Path) -> None:
    answers = {}
    for name, extra in {"plain": [], "draft": ["--draft", str(smollm2_gguf), "--spec", "on"]}.items():
        env = {**dx_env(tmp_path / name, engine_binary(request)), "DX_HOST": ""}
        ask = ["--temperature", "0", "--seed", "1", "--max-tokens", "48"]
        proc = subprocess.run([sys.executable, "-m", "dx", "run", str(smollm2_gguf), PROMPTS[0], *ask, *extra],
                              env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr
        answers[name] = proc.stdout
        argv = engine_argv(tmp_path / name)
        assert ("--spec-type draft-simple --spec-draft-model " in argv) == (name == "draft"), argv
    assert answers["draft"] == answers["plain"] and answers["plain"].strip()


@pytest.mark.integration
def test_dx_run_with_a_draft_measures_once_then_remembers(request: pytest.FixtureRequest, smollm2_gguf: Path,
                                                         tmp_path: Path) -> None:
    """Without --spec a draft is --spec auto for dx run too: the first run times the engine with and
    without it and says what it chose; the next run reuses that decision (one engine start, no timing)."""
    home = tmp_path / "auto"
    env = {**dx_env(home, engine_binary(request)), "DX_HOST": ""}

    def run() -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "dx", "run", str(smollm2_gguf), PROMPTS[0], "--temperature", "0",
                               "--seed", "1", "--max-tokens", "24", "--draft", str(smollm2_gguf)],
                              env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
        return proc

    first = run()
    said = re.search(r"^dx: --spec auto: speculation (on|off), (.+) \(measured now; ", first.stderr, re.MULTILINE)
    assert said, first.stderr
    saved = home / "spec-auto.json"
    if "could not be measured" in said[2]:  # a moment too loaded to time both sides: plain, nothing kept
        assert said[1] == "off" and not saved.exists()
        return
    (decision,) = json.loads(saved.read_text()).values()
    assert decision["speculate"] == (said[1] == "on") and decision["on_tps"] > 0 and decision["off_tps"] > 0
    speculating = "--spec-type draft-simple --spec-draft-model " in engine_argv(home)
    assert speculating == decision["speculate"]  # the engine that answered is the one the decision names
    second = run()
    assert f"dx: --spec auto: speculation {said[1]}, {said[2]} (measured before; " in second.stderr, second.stderr
    assert ("--spec-type draft-simple --spec-draft-model " in engine_argv(home)) == speculating
    assert second.stdout == first.stdout


@pytest.fixture(scope="module")
def two_model_file(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> tuple[Path, object]:
    """runtime + SmolLM2 + SmolLM2 again as its draft + trailer v2, as a two-model mint lays them out
    (a stand-in runtime: `python -m dx` reads it through DX_SELF_EXECUTABLE, no Nuitka compile)."""
    from dxverify.trailer import write_executable

    tmp = tmp_path_factory.mktemp("two-model")
    runtime = tmp / "runtime"
    runtime.write_bytes(b"not really a runtime" * 1000)
    exe = tmp / "dx-smollm2-cpu-linux-x86_64"
    with open(exe, "wb") as fh:
        em = write_executable(runtime, smollm2_gguf, fh, {
            "model": "smollm2", "source": "test", "tier": "cpu", "dx_version": "0", "llama_cpp_commit": "test"},
            draft=smollm2_gguf, draft_metadata={"model": "smollm2-draft"})
    return exe, em


@pytest.mark.integration
@pytest.mark.parametrize("spec", ["on", "none"], ids=["embedded-draft-on", "spec-none"])
def test_embedded_draft_is_used_by_default(request: pytest.FixtureRequest, two_model_file: tuple[Path, object],
                                           tmp_path: Path, spec: str) -> None:
    """`dx serve --spec on` of a two-model executable speculates with its draft, both mapped from the file;
    --spec none: off. (Without --spec, auto: test_spec_auto.py.)"""
    exe, em = two_model_file
    draft_at = em.draft.offset  # type: ignore[attr-defined]
    server = start_dx(tmp_path, "--ctx", "2048", "--parallel", "1", "--spec", spec,
                      engine=engine_binary(request), env={"DX_SELF_EXECUTABLE": str(exe)}, timeout=120)
    try:
        answer = chat(server, PROMPTS[0])  # waits for the engine
        argv = engine_argv(server.home)
        (pid,) = server.children()
        maps = [line for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if line.endswith(str(exe))]
        if spec == "on":
            assert f"--spec-type draft-simple --spec-draft-model {exe}#offset={draft_at}" in argv, argv
            assert answer["timings"]["draft_n"] > 0, answer["timings"]
            # two mappings of the executable: the model's tensors and the draft's (file offsets in column 3)
            offsets = sorted(int(line.split()[2], 16) for line in maps)
            assert len(offsets) >= 2 and offsets[-1] >= draft_at, maps
        else:
            assert "--spec-type" not in argv and "draft_n" not in answer["timings"], argv
            assert maps, "the model is not mapped from the executable"
        assert list(tmp_path.glob("**/*.gguf")) == []  # nothing extracted
    finally:
        server.stop()
