"""The Modelfile parser against a golden corpus (tests/runtime/models/modelfiles), and the pure parts of create.

``valid/X.Modelfile`` parses to ``valid/X.json`` (and renders to text that parses back to the same);
``invalid/X.Modelfile`` is refused with exactly ``invalid/X.error`` — one line naming the line and the
instruction. The ``ollama_*`` files are Ollama's documented examples (docs/modelfile.mdx), typed from the docs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from dx.models.create import render_record, spec_from_api
from dx.models.defaults import ModelDefaults, from_modelfile
from dx.models.modelfile import Modelfile, ModelfileError, check_parameters, parse, parse_parameter, quote

CORPUS = Path(__file__).parent / "modelfiles"
VALID = sorted((CORPUS / "valid").glob("*.Modelfile"))
INVALID = sorted((CORPUS / "invalid").glob("*.Modelfile"))


def _read(p: Path) -> str:
    return p.read_bytes().decode("utf-8")


def test_corpus_is_there() -> None:
    assert len(VALID) >= 10 and len(INVALID) >= 20
    assert sum(p.name.startswith("ollama_") for p in VALID) >= 6


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_golden(path: Path) -> None:
    mf = parse(_read(path))
    assert dataclasses.asdict(mf) == json.loads(path.with_suffix(".json").read_text())


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_render_round_trip(path: Path) -> None:
    mf = parse(_read(path))
    again = parse(mf.render())
    assert dataclasses.replace(again, warnings=[]) == dataclasses.replace(mf, warnings=[])


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_golden(path: Path) -> None:
    with pytest.raises(ModelfileError) as e:
        parse(_read(path))
    message = str(e.value)
    assert message == path.with_suffix(".error").read_text().rstrip("\n")
    assert "\n" not in message and message.startswith("Modelfile")
    assert e.value.http_status == 400


def test_errors_name_line_and_instruction() -> None:
    with pytest.raises(ModelfileError, match=r"^Modelfile line 4: PARAMETER seed: invalid int value 'x'"):
        parse("FROM a\n\n# c\nPARAMETER seed x\n")
    with pytest.raises(ModelfileError, match=r"line 2: SYSTEM: the \"\"\" string is never closed"):
        parse('FROM a\nSYSTEM """one\ntwo\nthree\n')


def test_repeated_stop_accumulates_other_parameters_last_wins() -> None:
    mf = parse("FROM a\nPARAMETER stop a\nPARAMETER stop b\nPARAMETER seed 1\nPARAMETER seed 2\n")
    assert mf.parameters == {"stop": ["a", "b"], "seed": 2}


def test_too_many_stops_refused() -> None:
    text = "FROM a\n" + "".join(f"PARAMETER stop s{i}\n" for i in range(17))
    with pytest.raises(ModelfileError, match="line 18: PARAMETER stop: more than 16"):
        parse(text)


@pytest.mark.parametrize(("text", "want"), [
    ("plain", "plain"), (" lead", '" lead"'), ("two\nlines", '"""two\nlines"""'), ('say "hi"', 'say "hi"'),
    ('"quoted"', '"""\"quoted\""""'), ("", '""'),
])
def test_quote(text: str, want: str) -> None:
    assert quote(text) == want
    assert parse(f"FROM a\nSYSTEM {quote(text)}\n").system == text


def test_parameter_types_follow_go() -> None:
    assert parse_parameter("temperature", "1") == 1.0
    assert parse_parameter("top_k", "-0") == 0
    assert parse_parameter("use_mmap", "F") is False
    for key, bad in (("top_k", "1.5"), ("temperature", "nan"), ("numa", "yes"), ("num_ctx", "1e3")):
        with pytest.raises(ModelfileError):
            parse_parameter(key, bad)


def test_api_parameters() -> None:
    assert check_parameters({"temperature": 0, "stop": "x", "num_ctx": 2048.0, "penalize_newline": True}) == {
        "temperature": 0.0, "stop": ["x"], "num_ctx": 2048}
    for bad, words in (({"temprature": 1}, "unknown parameter 'temprature'; did you mean temperature?"),
                       ({"num_ctx": "big"}, "parameter 'num_ctx' must be an integer"),
                       ({"temperature": True}, "parameter 'temperature' must be a number"),
                       ({"stop": [1]}, "parameter 'stop' must be a string or a list"),
                       ({"num_ctx": 3}, "parameter 'num_ctx': 3 is out of range"),
                       ([1], "parameters must be a JSON object")):
        with pytest.raises(ModelfileError, match=words.replace("?", r"\?")):
            check_parameters(bad)


def test_spec_from_api_shapes() -> None:
    spec, files = spec_from_api({"model": "m", "from": "smollm2", "system": "s", "parameters": {"seed": 3},
                                 "messages": [{"role": "user", "content": "hi"}], "license": "MIT"})
    assert (spec.from_, spec.system, spec.params, spec.license, files) == ("smollm2", "s", {"seed": 3}, ["MIT"], [])
    digest = "sha256:" + "ab" * 32
    spec, files = spec_from_api({"model": "m", "files": {"model.gguf": digest}, "adapters": {"a.gguf": digest}})
    assert files == [digest] and spec.adapters == [digest]
    for doc, words in (({"model": "m"}, "neither 'from' or 'files' was specified"),
                       ({"model": "m", "files": {"../x.gguf": digest}}, "file path must be relative"),
                       ({"model": "m", "files": {"x.gguf": "sha256:12"}}, "invalid digest format"),
                       ({"model": "m", "from": "a", "quantize": "q4_K_M"}, "quantize is not supported"),
                       ({"model": "m", "from": "a", "messages": [{"role": "tool", "content": "x"}]}, "message role"),
                       ({"model": "m", "from": "a", "requires": "soon"}, "requires must be a valid semver"),
                       ({"from": "a"}, "model is required")):
        with pytest.raises(ModelfileError, match=words):
            spec_from_api(doc)


def test_record_renders_and_becomes_defaults(tmp_path: Path) -> None:
    digest = "sha256:" + "cd" * 32
    record = {"from": "smollm2:135m", "system": "Be terse.", "template": "{{ .Prompt }}", "license": ["MIT"],
              "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
              "params": {"temperature": 0.0, "stop": ["END"], "num_thread": 2, "use_mmap": False,
                         "draft_num_predict": 5},
              "adapters": [digest], "draft": digest, "requires": None}
    mf = parse(render_record(record))
    assert (mf.from_, mf.system, mf.template, mf.adapters, mf.draft) == (
        "smollm2:135m", "Be terse.", "{{ .Prompt }}", [digest], digest)
    d = from_modelfile(record, tmp_path)
    blob = str(tmp_path / ("sha256-" + "cd" * 32))
    args = d.engine_args()
    assert args[args.index("--temp"):args.index("--temp") + 2] == ["--temp", "0.0"]
    assert args[args.index("-r"):args.index("-r") + 2] == ["-r", "END"]
    assert args[args.index("-t"):args.index("-t") + 2] == ["-t", "2"]
    assert args[args.index("--load-mode"):args.index("--load-mode") + 2] == ["--load-mode", "none"]
    assert "--lora" not in args  # a model's adapters take one path: dx.models.adapters (test_model_adapters.py)
    assert "--spec-draft-model" not in args  # whether the draft is used is --spec's to decide (auto: timed first)
    assert d.draft_args() == ["--spec-type", "draft-simple", "--spec-draft-model", blob, "--spec-draft-n-max", "5"]
    assert from_modelfile({**record, "params": {"draft_num_predict": 0}}, tmp_path).draft_args() == []
    assert from_modelfile({**record, "draft": None}, tmp_path).draft_args() == []


def test_prepend_system_and_messages() -> None:
    d = ModelDefaults(system="S", messages=({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}))
    chat = [{"role": "user", "content": "hello"}]
    assert d.prepend_to(chat) is True
    assert [m["content"] for m in chat] == ["S", "q", "a", "hello"]
    own = [{"role": "system", "content": "mine"}, {"role": "user", "content": "hello"}]
    d.prepend_to(own)
    assert [m["content"] for m in own] == ["mine", "q", "a", "hello"]  # the chat's own system stays first
    assert ModelDefaults().prepend_to(chat) is False


def test_modelfile_render_order() -> None:
    mf = Modelfile(from_="a", system="s", parameters={"stop": ["x", "y"]}, messages=[{"role": "user", "content": "u"}])
    assert mf.render() == "FROM a\nSYSTEM s\nPARAMETER stop x\nPARAMETER stop y\nMESSAGE user u\n"
