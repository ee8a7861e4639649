"""``dxbuild --modelfile``: the Modelfile read and checked in the mint's first second (one line per refusal,
naming the file, the line and the instruction), FROM/ADAPTER/DRAFT turned into --model/--adapter/--draft, the
served name, and the record the trailer carries: the shape of a created model, its digests taken from the
entries as they were hashed, read back by the runtime (defaults, `show --modelfile`), tampering refused."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from support.files import flip_byte
from support.tiny_lora import write_tiny_lora
from test_embed_writer import META, _inputs

from dxbuild.cli import cli
from dxbuild.context import BuildContext, MintModelfile, MintOptions
from dxbuild.modelfile import default_name, finish_record, load
from dxverify import trailer
from dxverify.errors import ConfigurationError, DXError

PIRATE = """\
# a persona
FROM ./base.gguf
SYSTEM "Your name is Captain Barnacle. You are a pirate."
PARAMETER temperature 0
PARAMETER stop pirate
MESSAGE user Hello
MESSAGE assistant "Ahoy, matey!"
LICENSE "SmolLM2: Apache-2.0"
"""


def _modelfile(tmp_path: Path, text: str = PIRATE, name: str = "pirate.Modelfile") -> Path:
    (tmp_path / "base.gguf").write_bytes(b"GGUF")  # resolved later by the model step; here only its path counts
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_without_modelfile_the_options_are_unchanged() -> None:
    opts = MintOptions(model="smollm2")
    assert load(opts) == (opts, None)


def test_from_becomes_the_model_relative_to_the_modelfile(tmp_path: Path) -> None:
    mf = _modelfile(tmp_path)
    opts, found = load(MintOptions(modelfile=mf))
    assert opts.model == str(tmp_path / "base.gguf") and opts.adapter is None and opts.draft is None
    assert found is not None and found.name == "pirate" and found.size == len(PIRATE)
    rec = found.record
    assert rec["from"] == "base.gguf"  # a path travels as its file name, never the builder's folders
    assert rec["system"] == "Your name is Captain Barnacle. You are a pirate."
    assert rec["params"] == {"temperature": 0.0, "stop": ["pirate"]}
    assert rec["messages"] == [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Ahoy, matey!"}]
    assert rec["license"] == ["SmolLM2: Apache-2.0"]


def test_adapter_and_draft_lines_become_the_flags(tmp_path: Path) -> None:
    (tmp_path / "tuned.gguf").write_bytes(b"GGUF")
    (tmp_path / "small.gguf").write_bytes(b"GGUF")
    mf = _modelfile(tmp_path, PIRATE + "ADAPTER tuned.gguf\nDRAFT ./small.gguf\n")
    opts, _ = load(MintOptions(modelfile=mf))
    assert opts.adapter == str(tmp_path / "tuned.gguf") and opts.draft == str(tmp_path / "small.gguf")
    # a flag the Modelfile does not also say is kept (the record names what is embedded)
    opts, _ = load(MintOptions(modelfile=_modelfile(tmp_path), adapter="x.gguf", draft="y.gguf"))
    assert (opts.adapter, opts.draft) == ("x.gguf", "y.gguf")


@pytest.mark.parametrize(("name", "served"), [
    ("pirate.Modelfile", "pirate"), ("Modelfile.pirate", "pirate"), ("Pirate.modelfile", "pirate"),
    ("barnacle.txt", "barnacle"), ("Modelfile", None), ("MODELFILE", None),
])
def test_the_served_name_from_the_file_name(name: str, served: str | None) -> None:
    assert default_name(Path("/x") / name) == served


def test_name_flag_wins_and_is_checked(tmp_path: Path) -> None:
    mf = _modelfile(tmp_path, name="Modelfile")
    assert load(MintOptions(modelfile=mf))[1].name is None  # type: ignore[union-attr]  (the FROM model's name)
    assert load(MintOptions(modelfile=mf, name="barnacle"))[1].name == "barnacle"  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match="--name 'no good!' is not a model name"):
        load(MintOptions(modelfile=mf, name="no good!"))


@pytest.mark.parametrize(("text", "extra", "words"), [
    (PIRATE, {"model": "smollm2"}, "--modelfile names its model with FROM: leave out --model"),
    (PIRATE + "ADAPTER a.gguf\n", {"adapter": "b.gguf"}, "--adapter and the Modelfile's ADAPTER (line 9)"),
    (PIRATE + "DRAFT a.gguf\n", {"draft": "b.gguf"}, "--draft and the Modelfile's DRAFT both"),
    (PIRATE + "ADAPTER a.gguf\nADAPTER b.gguf\n", {}, "Modelfile line 10: ADAPTER: a second ADAPTER"),
    ("FROM smollm2\nPARAMETER temprature 0\n", {}, "Modelfile line 2: PARAMETER temprature: unknown parameter"),
    ("FROM smollm2\nRENDERER qwen3\n", {}, "Modelfile line 2: RENDERER: not supported by DX"),
    ("SYSTEM hi\n", {}, "no FROM line"),
    ("FROM ./missing.gguf\n", {}, "FROM ./missing.gguf: no such file (a path is relative to the Modelfile"),
    ("FROM sha256:" + "ab" * 32 + "\n", {}, "no such blob in DX's store"),
])
def test_refusals_are_one_line_before_anything_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        text: str, extra: dict, words: str) -> None:
    monkeypatch.setenv("DX_HOME", str(tmp_path / "home"))
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(ConfigurationError) as err:
        load(MintOptions(modelfile=_modelfile(tmp_path, text), **extra))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_name_without_modelfile_and_a_missing_modelfile(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="--name names a Modelfile's model: it needs --modelfile"):
        load(MintOptions(model="smollm2", name="x"))
    with pytest.raises(ConfigurationError, match="no such file"):
        load(MintOptions(modelfile=tmp_path / "nope"))
    binary = tmp_path / "bin.Modelfile"
    binary.write_bytes(b"FROM x\n\xff\xfe")
    with pytest.raises(ConfigurationError, match="not UTF-8 text"):
        load(MintOptions(modelfile=binary))


def test_the_cli_refuses_in_the_first_second(tmp_path: Path) -> None:
    """Through `dxbuild` itself: exit 2, one line naming the file and the line, nothing in the output folder."""
    from click.testing import CliRunner

    mf = _modelfile(tmp_path, "FROM smollm2\nMESSAGE robot hi\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["--modelfile", str(mf), "-o", str(out)])
    assert res.exit_code != 0
    assert isinstance(res.exception, DXError) and "Modelfile line 2: MESSAGE robot" in str(res.exception)
    assert not out.exists() or not any(out.iterdir())


def test_the_record_is_a_created_models_shape() -> None:
    """One shape for `dx create` and for a minted Modelfile: the runtime reads both the same way."""
    from dx.models.create import render_record

    rec = finish_record({"from": "smollm2", "base": None, "system": "s", "template": None, "license": [],
                         "messages": [], "params": {"stop": ["x"]}, "adapters": [], "draft": None,
                         "requires": None}, "a" * 64, "b" * 64, None)
    assert set(rec) == {"from", "base", "system", "template", "license", "messages", "params", "adapters",
                        "draft", "requires", "text"}
    assert rec["base"] == "sha256:" + "a" * 64 and rec["adapters"] == ["sha256:" + "b" * 64]
    assert rec["text"] == render_record(rec) and "ADAPTER sha256:" + "b" * 64 in rec["text"]


def _sealed(tmp_path: Path, mf: Path, **kw: object) -> tuple[Path, trailer.EmbeddedModel]:
    _, found = load(MintOptions(modelfile=mf))
    assert found is not None
    rt, model = _inputs(tmp_path)
    meta = {**META, "model": found.name, "modelfile": found.record, "modelfile_sha256": found.sha256}
    dest = tmp_path / "minted"
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        from dxbuild.steps.embed import write_minted

        em, _ = write_minted(rt, model, fd, meta, dest=dest, chunk=1 << 20, **kw)  # type: ignore[arg-type]
    finally:
        os.close(fd)
    return dest, em


def test_the_trailer_carries_the_record_with_the_entries_digests(tmp_path: Path) -> None:
    lora = write_tiny_lora(tmp_path / "tiny-lora.gguf")
    exe, _em = _sealed(tmp_path, _modelfile(tmp_path), adapter=lora, adapter_metadata={"model": "tiny-lora",
                                                                                       "source": "file:x"})
    found = trailer.read_trailer(exe)
    rec = found.metadata["modelfile"]
    assert found.metadata["model"] == "pirate"
    assert rec["base"] == f"sha256:{found.sha256}" and rec["adapters"] == [f"sha256:{found.adapter.sha256}"]
    assert rec["draft"] is None and "SYSTEM " in rec["text"] and "PARAMETER stop pirate" in rec["text"]
    from dx.models.modelfile import parse

    back = parse(rec["text"])  # `show --modelfile` round-trips what the Modelfile said
    orig = parse(PIRATE)
    assert (back.system, back.parameters, back.messages, back.license) == (
        orig.system, orig.parameters, orig.messages, orig.license)


def test_the_runtime_reads_the_embedded_record_as_a_created_models(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DX_HOME", str(tmp_path / "home"))
    _exe, em = _sealed(tmp_path, _modelfile(tmp_path))
    from dx.models.defaults import for_source
    from dx.models.embedded import embedded_modelfile, model_source, modelfile_for_embedded

    src = model_source(em)
    assert src.name == "pirate"
    d = for_source(src)
    assert d.system == "Your name is Captain Barnacle. You are a pirate." and d.stop == ["pirate"]
    assert d.draft is None and d.engine_args()[-2:] == ["-r", "pirate"]
    chat = [{"role": "user", "content": "What is your name?"}]
    assert d.prepend_to(chat) and [m["role"] for m in chat] == ["system", "user", "assistant", "user"]
    assert embedded_modelfile(em) == modelfile_for_embedded(src) == em.metadata["modelfile"]


def test_a_tampered_record_is_refused(tmp_path: Path) -> None:
    exe, _ = _sealed(tmp_path, _modelfile(tmp_path))
    data = exe.read_bytes()
    at = data.rindex(b"Captain Barnacle")
    flip_byte(exe, at)
    with pytest.raises(DXError, match=r"CRC|crc|metadata"):
        trailer.read_trailer(exe)


def test_manifest_and_sbom_name_the_modelfile(tmp_path: Path) -> None:
    from dxbuild.release.manifest import build_manifest
    from dxbuild.steps.sbom import mint_document, modelfile_facts

    mf = _modelfile(tmp_path)
    _, found = load(MintOptions(modelfile=mf))
    assert found is not None
    ctx = BuildContext(cell=None, out_dir=tmp_path, modelfile=found)  # type: ignore[arg-type]
    facts = modelfile_facts(ctx)
    assert facts == {"name": "pirate", "sha256": found.sha256, "size": len(PIRATE)}
    model = {"name": "smollm2", "source": "x", "sha256": "c" * 64, "size": 1, "license": None}
    from datetime import datetime, timezone

    doc = mint_document([], exe_name="dx-pirate", exe_sha256="d" * 64, dx_version="0.1.0", model=model,
                        timestamp=datetime(2026, 1, 1, tzinfo=timezone.utc), modelfile=facts)
    comp = next(c for c in doc["components"] if c["bom-ref"] == "modelfile")
    assert comp["hashes"][0]["content"] == found.sha256 and comp["type"] == "data"
    assert "+ Modelfile" in doc["metadata"]["component"]["description"]
    f = {"file": "dx-pirate-cpu-linux-x86_64", "tier": "cpu", "os": "linux", "arch": "x86_64", "size": 1,
         "sha256": "d" * 64, "model": model, "requirements": {}, "modelfile": facts}
    assert build_manifest(tmp_path, [f], "0.1.0")["artifacts"][0]["modelfile"] == facts
    schema = json.loads((Path(__file__).parents[3] / "ci/schemas/manifest.schema.json").read_text())
    assert set(schema["$defs"]["modelfile"]["required"]) == set(facts)
    exe, _ = _sealed(tmp_path, mf)
    assert trailer.read_trailer(exe).metadata["modelfile_sha256"] == found.sha256


def test_served_name_names_the_file(tmp_path: Path) -> None:
    from dxbuild.steps.write_output import output_name

    found = MintModelfile(path=tmp_path, sha256="0" * 64, size=1, name="pirate")
    ctx = BuildContext(cell=None, out_dir=tmp_path, modelfile=found)  # type: ignore[arg-type]
    assert ctx.served_name() == "pirate"
    assert BuildContext(cell=None, out_dir=tmp_path,  # type: ignore[arg-type]
                        modelfile=dataclasses.replace(found, name=None)).served_name() is None

    class Cell:
        tier, os, arch = "cpu", "linux", "x86_64"

    assert output_name(Cell(), ctx.served_name()) == "dx-pirate-cpu-linux-x86_64"
