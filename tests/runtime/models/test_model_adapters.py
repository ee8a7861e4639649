"""dx.models.adapters.adapters_for, the one path to ``--lora``: which LoRA adapters the engine gets for a model —
a created model's ``modelfile["adapters"]`` digests (``dx create`` / ``/api/create``), an Ollama model's adapter
layers, or the executable's "adapter" entry extracted once to a verified cache file — and a named adapter that is
missing, damaged or made for another model refuses the start. ``ModelDefaults.engine_args()`` has no ``--lora``
(the manager's key adds ``adapter_key`` once)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from support.fake_minted import fake_minted
from support.files import flip_byte
from support.tiny_lora import write_tiny_lora

from dx.engine.process import lora_args
from dx.models import embedded
from dx.models.adapters import adapter_key, adapters_for
from dx.models.create import CreateSpec, as_base, create
from dx.models.defaults import ModelDefaults, for_source
from dx.models.entry import ModelEntry
from dx.models.source import ModelSource
from dx.models.store import ModelStore
from dxverify import trailer
from dxverify.errors import IncompatibleModelsError, IntegrityError, MalformedInputError


def _blob(store: ModelStore, adapter: Path) -> str:
    """Put ``adapter`` into the store's blobs as /api/blobs would; its digest."""
    digest = hashlib.sha256(adapter.read_bytes()).hexdigest()
    store.blobs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(adapter, store.blobs / f"sha256-{digest}")
    return digest


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelStore:
    monkeypatch.setenv("DX_HOME", str(tmp_path / "dxhome"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-ollama"))
    return ModelStore(tmp_path / "dxhome", ollama_dir=False)


def _source(store: ModelStore, name: str) -> ModelSource:
    entry = store.get(name)
    return ModelSource(entry.path, name=entry.name, sha256=entry.sha256)


def _named(store: ModelStore, smollm2_gguf: Path, adapters: list[object], name: str = "shaped") -> ModelEntry:
    """A created model's manifest with this ``adapters`` record, written as is (no create-time check)."""
    base = store.import_file(smollm2_gguf, "bare", link=True)
    record = {"from": "bare", "base": f"sha256:{base.sha256}", "adapters": adapters}
    return store.name_modelfile(name, base, "create:bare", record)


def test_a_created_model_gets_its_adapters_in_order(store: ModelStore, smollm2_gguf: Path,
                                                    tmp_path: Path) -> None:
    one = _blob(store, write_tiny_lora(tmp_path / "one.gguf", seed=1))
    two = _blob(store, write_tiny_lora(tmp_path / "two.gguf", seed=2))
    base = store.import_file(smollm2_gguf, "bare", link=True)
    spec = CreateSpec(name="shaped", from_="bare", system="terse", adapters=[f"sha256:{two}", f"sha256:{one}"])
    create(store, spec, base, ModelDefaults(), lambda _s: None)
    got = adapters_for(_source(store, "shaped:latest"))
    assert got == [store.blobs / f"sha256-{two}", store.blobs / f"sha256-{one}"]
    assert lora_args(_source(store, "shaped:latest")) == ["--lora", str(got[0]), "--lora", str(got[1])]
    assert adapters_for(_source(store, "bare:latest")) == []  # same blob, another name: no adapter
    # one path: the defaults (and so the manager's key) carry no --lora of their own; adapter_key adds it once
    shaped = for_source(_source(store, "shaped:latest"))
    assert shaped.system == "terse" and "--lora" not in shaped.engine_args()
    assert adapter_key(_source(store, "shaped:latest")) == ("--lora", two, one)
    # a model created from it carries them over, and adds its own after them
    three = _blob(store, write_tiny_lora(tmp_path / "three.gguf", seed=3))
    create(store, CreateSpec(name="more", from_="shaped", adapters=[f"sha256:{three}"]), store.get("shaped"),
           ModelDefaults(), lambda _s: None, base_record=store.get("shaped").modelfile)
    assert [p.name for p in adapters_for(_source(store, "more"))] == [f"sha256-{d}" for d in (two, one, three)]


def test_create_checks_an_adapter_with_dxverify_adapter(store: ModelStore, smollm2_gguf: Path,
                                                        tmp_path: Path) -> None:
    """The create-time check is the runtime's (llama-adapter.cpp's rules), named by the Modelfile line."""
    from dx.models.modelfile import ModelfileError, parse

    wide = _blob(store, write_tiny_lora(tmp_path / "wide.gguf", targets={"blk.0.attn_k.weight": (576, 576)}))
    base = store.import_file(smollm2_gguf, "bare", link=True)
    from dx.models.create import spec_from_modelfile

    mf = parse("FROM bare\nSYSTEM hi\n\nADAPTER ./wide.gguf\n")
    spec = spec_from_modelfile("shaped", mf, "bare", [f"sha256:{wide}"], None)
    with pytest.raises(ModelfileError) as e:
        create(store, spec, base, ModelDefaults(), lambda _s: None)
    assert str(e.value).startswith("Modelfile line 4: ADAPTER ./wide.gguf: LoRA pair for 'blk.0.attn_k.weight'")
    assert str(store.root) not in str(e.value) and "shaped" not in [m.name.split(":")[0] for m in store.list()]


def test_a_missing_adapter_blob_refuses_the_start(store: ModelStore, smollm2_gguf: Path) -> None:
    _named(store, smollm2_gguf, [f"sha256:{'cd' * 32}"])
    with pytest.raises(MalformedInputError) as e:
        lora_args(_source(store, "shaped"))
    assert str(e.value).startswith(f"model 'shaped:latest': its adapter blob sha256:{'cd' * 32} is gone from the"
                                   " store")
    assert str(store.root) not in str(e.value)  # no server path: the line can reach a client


def test_a_damaged_adapter_blob_refuses_the_start(store: ModelStore, smollm2_gguf: Path, tmp_path: Path) -> None:
    digest = _blob(store, write_tiny_lora(tmp_path / "one.gguf"))
    _named(store, smollm2_gguf, [f"sha256:{digest}"])
    flip_byte(store.blobs / f"sha256-{digest}", (store.blobs / f"sha256-{digest}").stat().st_size - 5)
    with pytest.raises(IntegrityError, match=f"its adapter blob sha256:{digest} is damaged") as e:
        adapters_for(_source(store, "shaped"))
    assert str(store.root) not in str(e.value)


def test_an_adapter_for_another_model_refuses_the_start(store: ModelStore, smollm2_gguf: Path,
                                                         tmp_path: Path) -> None:
    digest = _blob(store, write_tiny_lora(tmp_path / "q.gguf", arch="qwen2"))
    _named(store, smollm2_gguf, [digest])
    with pytest.raises(IncompatibleModelsError,
                       match=r"model 'shaped:latest': adapter blob sha256:\w+ is for architecture 'qwen2'"):
        adapters_for(_source(store, "shaped"))


def test_a_broken_adapters_record_is_one_line(store: ModelStore, smollm2_gguf: Path) -> None:
    _named(store, smollm2_gguf, ["./lora.gguf"])
    with pytest.raises(MalformedInputError, match=r"names adapter './lora.gguf', not a sha256 digest"):
        adapters_for(_source(store, "shaped"))


def test_a_gguf_served_by_path_has_no_adapter(smollm2_gguf: Path) -> None:
    assert adapters_for(ModelSource(smollm2_gguf)) == []


def test_lora_args_quote_a_path_with_a_comma(store: ModelStore, smollm2_gguf: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """llama-server splits --lora at commas (parse_csv_row, which honours double quotes)."""
    import dx.engine.process as process

    monkeypatch.setattr(process, "adapters_for", lambda _s: [Path('/a,b/x"y.gguf'), Path("/plain.gguf")])
    assert lora_args(ModelSource(smollm2_gguf)) == ["--lora", '"/a,b/x""y.gguf"', "--lora", "/plain.gguf"]


@pytest.fixture
def lora_file(tmp_path: Path, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake runtime + the real SmolLM2 + the tiny random LoRA as the "adapter" entry."""
    lora = write_tiny_lora(tmp_path / "tiny-lora.gguf")
    exe = fake_minted(tmp_path / "dx-smollm2-cpu-linux-x86_64", smollm2_gguf, adapter=(lora, "tiny-lora"))
    monkeypatch.setenv(embedded.SELF_ENV, str(exe))
    monkeypatch.setenv("DX_HOME", str(tmp_path / "dxhome"))
    return exe


def test_the_embedded_adapter_is_extracted_once_and_verified(lora_file: Path, tmp_path: Path) -> None:
    em = trailer.read_trailer(lora_file)
    got = embedded.embedded_part(em, "adapter")
    assert em.adapter is not None and got is not None
    assert got == tmp_path / "dxhome" / "cache" / "adapters" / f"sha256-{em.adapter.sha256}.gguf"
    assert got.read_bytes() == (tmp_path / "tiny-lora.gguf").read_bytes()
    assert [p.name for p in got.parent.iterdir()] == [got.name]
    before = got.stat()
    src = embedded.embedded_source()
    assert src is not None and adapters_for(src) == [got]
    assert (got.stat().st_ino, got.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # reused


def test_a_tampered_adapter_entry_refuses_the_start(lora_file: Path, tmp_path: Path) -> None:
    em = trailer.read_trailer(lora_file)
    assert em.adapter is not None
    flip_byte(lora_file, em.adapter.offset + em.adapter.length - 10)
    with pytest.raises(IntegrityError, match=r"the embedded adapter .* has SHA-256 .*, the trailer says") as e:
        embedded.embedded_source()
    assert str(lora_file) in str(e.value) and "\n" not in str(e.value)
    cache = tmp_path / "dxhome" / "cache" / "adapters"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_no_adapter_without_the_entry(tmp_path: Path, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = fake_minted(tmp_path / "one", smollm2_gguf)
    monkeypatch.setenv("DX_HOME", str(tmp_path / "dxhome"))
    src = embedded.embedded_source(exe)
    assert src is not None and adapters_for(src) == [] and lora_args(src) == []
    assert not (tmp_path / "dxhome" / "cache" / "adapters").exists()


def test_adapter_key_tells_two_names_for_one_blob_apart(store: ModelStore, smollm2_gguf: Path, tmp_path: Path,
                                                         lora_file: Path) -> None:
    """The engine manager keys its engines by it: "bare" and "shaped" share a blob but not an engine."""
    digest = _blob(store, write_tiny_lora(tmp_path / "one.gguf"))
    _named(store, smollm2_gguf, [f"sha256:{digest}"])
    assert adapter_key(_source(store, "bare")) == ()
    assert adapter_key(_source(store, "shaped")) == ("--lora", digest)
    src = embedded.embedded_source()
    em = trailer.read_trailer(lora_file)
    assert src is not None and em.adapter is not None and adapter_key(src) == ("--lora", em.adapter.sha256)


def test_an_ollama_model_with_an_adapter_layer_gets_it(tmp_path: Path, smollm2_gguf: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A model of Ollama's store (read-only) whose manifest has an ``application/vnd.ollama.image.adapter`` layer."""
    import json

    from support.ollama_tree import SMOL_SHA, make_ollama_tree

    tree = make_ollama_tree(tmp_path / "ollama", smollm2_gguf)
    lora = write_tiny_lora(tmp_path / "tiny-lora.gguf")
    digest = hashlib.sha256(lora.read_bytes()).hexdigest()
    shutil.copyfile(lora, tree / "blobs" / f"sha256-{digest}")
    plain = json.loads((tree / "manifests/registry.ollama.ai/library/smollm2/135m").read_text())
    # Ollama's manifest lookup wants every layer's blob present at its size: the model's, and the adapter's
    plain["layers"] = [dict(ly, size=smollm2_gguf.stat().st_size) for ly in plain["layers"]
                       if ly["mediaType"].endswith(".model")]
    plain["layers"].append({"mediaType": "application/vnd.ollama.image.adapter", "digest": f"sha256:{digest}",
                            "size": lora.stat().st_size})
    shaped = tree / "manifests/registry.ollama.ai/library/smollora/latest"
    shaped.parent.mkdir(parents=True)
    shaped.write_text(json.dumps(plain))
    monkeypatch.setenv("DX_HOME", str(tmp_path / "dxhome"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tree))
    store = ModelStore(tmp_path / "dxhome", ollama_dir=tree)
    entry = store.get("smollora")
    assert entry.read_only and entry.path.name == f"sha256-{SMOL_SHA}"
    src = ModelSource(entry.path, name=entry.name, sha256=entry.sha256)
    assert adapters_for(src) == [tree / "blobs" / f"sha256-{digest}"]
    plain_entry = store.get("smollm2:135m")
    assert adapters_for(ModelSource(plain_entry.path, name=plain_entry.name)) == []
    assert adapter_key(src) == ("--lora", digest)
    # a model created from it keeps the adapter (as Ollama's create does), and adds its own after it
    own = _blob(store, write_tiny_lora(tmp_path / "own.gguf", seed=5))
    create(store, CreateSpec(name="mine", from_="smollora", adapters=[f"sha256:{own}"]), as_base(entry),
           ModelDefaults(), lambda _s: None)
    mine = _source(store, "mine")
    assert adapters_for(mine) == [tree / "blobs" / f"sha256-{digest}", store.blobs / f"sha256-{own}"]
    assert adapter_key(mine) == ("--lora", digest, own)
    flip_byte(tree / "blobs" / f"sha256-{digest}", lora.stat().st_size - 5)
    with pytest.raises(IntegrityError, match=f"adapter blob sha256:{digest} is damaged"):
        adapters_for(src)
