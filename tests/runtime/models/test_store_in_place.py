"""The store's ``in_file`` manifests: a name for bytes inside another file (the model in a minted executable),
never a copy; re-verified at every resolve, so a moved or changed file is a clear error, never other bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.fake_minted import fake_minted

from dx.errors import ModelConflictError, ModelNotFoundError
from dx.models.catalog import ModelResolver, Store
from dx.models.embedded import model_source
from dxverify import trailer
from dxverify.errors import IntegrityError, MalformedInputError


@pytest.fixture
def minted(tmp_path: Path, smollm2_gguf: Path) -> Path:
    return fake_minted(tmp_path / "dx-smollm2", smollm2_gguf)


@pytest.fixture
def resolver(tmp_path: Path, minted: Path) -> ModelResolver:
    return ModelResolver(model_source(trailer.read_trailer(minted)), Store(tmp_path / "home", ollama_dir=False))


def test_copy_of_the_embedded_model_names_its_bytes_in_place(resolver: ModelResolver, minted: Path) -> None:
    em = trailer.read_trailer(minted)
    entry = resolver.copy("smollm2", "mine")
    assert entry.name == "mine:latest" and entry.in_place
    assert (entry.path, entry.offset, entry.length, entry.sha256) == (minted.resolve(), em.offset, em.length,
                                                                      em.sha256)
    assert not any(resolver.store.blobs.iterdir())  # no byte copied
    src = resolver("mine")
    assert (src.path, src.offset, src.length, src.sha256) == (minted.resolve(), em.offset, em.length, em.sha256)
    assert src.engine_model_arg == f"{minted.resolve()}#offset={em.offset}"
    assert resolver.store.show("mine").facts.arch == "llama"
    assert [e.name for e in resolver.store.list()] == ["mine:latest"]
    again = resolver.copy("mine:latest", "again")  # a copy of a copy: the same bytes, still in place
    assert (again.path, again.offset, again.length) == (entry.path, entry.offset, entry.length)
    resolver.store.delete("mine")
    resolver.store.delete("again")
    assert minted.is_file() and resolver.store.list() == []


def test_a_moved_executable_resolves_to_a_404_naming_the_model(resolver: ModelResolver, minted: Path) -> None:
    resolver.copy("smollm2", "mine")
    minted.rename(minted.with_name("elsewhere"))
    with pytest.raises(ModelNotFoundError, match=r"'mine:latest'.*no longer there") as e:
        resolver("mine")
    assert str(minted.parent) not in str(e.value)
    resolver.store.delete("mine")  # still deletable


def test_a_changed_executable_is_never_other_bytes(resolver: ModelResolver, minted: Path) -> None:
    resolver.copy("smollm2", "mine")
    em = trailer.read_trailer(minted)
    with open(minted, "r+b") as f:
        f.seek(em.offset + em.length - 50)
        f.write(b"\xff\xfe")
    with pytest.raises(IntegrityError, match="'mine:latest' no longer matches") as e:
        resolver("mine")
    assert str(minted.parent) not in str(e.value)


def test_a_forged_in_file_record_is_a_broken_manifest(resolver: ModelResolver, minted: Path) -> None:
    entry = resolver.copy("smollm2", "mine")
    path = resolver.store.manifests / "mine%3Alatest.json"
    doc = json.loads(path.read_text())
    doc["in_file"]["path"] = "relative/file"
    path.write_text(json.dumps(doc))
    with pytest.raises(MalformedInputError, match="broken manifest for 'mine:latest'"):
        resolver("mine")  # refused, never read as a path relative to wherever the server runs
    assert entry.sha256 == doc["digest"][7:]


def test_the_served_names_cannot_be_copied_over(resolver: ModelResolver) -> None:
    for dst in ("smollm2", "smollm2:latest"):
        with pytest.raises(ModelConflictError):
            resolver.copy("smollm2", dst)
    with pytest.raises(ModelNotFoundError, match="model 'nope' not found"):
        resolver.copy("nope", "x")


def test_store_model_copy_shares_the_blob(tmp_path: Path, smollm2_gguf: Path) -> None:
    store = Store(tmp_path / "home", ollama_dir=False)
    store.import_file(smollm2_gguf, "smol")
    r = ModelResolver(None, store)
    copy = r.copy("smol", "smol2")
    assert not copy.in_place and copy.path == store.get("smol").path
    store.delete("smol")
    assert store.get("smol2").path.is_file()  # the blob stays with its other name
