"""The model store: import/list/show/copy/delete, atomic manifests, resolve, Ollama's tree read-only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support.ollama_tree import SMOL_SHA, link_or_copy, make_ollama_tree

from dx.errors import ModelNotFoundError, ReadOnlyModelError
from dx.models.catalog import Store
from dx.names import parse_hf, parse_name
from dxverify.errors import ConfigurationError, IntegrityError, MalformedInputError


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "dxhome", ollama_dir=False)


def test_import_list_show_copy_delete_round_trip(store: Store, smollm2_gguf: Path) -> None:
    assert store.list() == []
    entry = store.import_file(smollm2_gguf, "smollm2")
    assert entry.name == "smollm2:latest" and entry.sha256 == SMOL_SHA
    assert entry.size == smollm2_gguf.stat().st_size
    assert entry.path == store.blobs / f"sha256-{SMOL_SHA}"
    assert [e.name for e in store.list()] == ["smollm2:latest"]
    assert store.get("smollm2") == store.get("smollm2:latest") == entry

    details = store.show("smollm2")
    assert details.facts.arch == "llama" and details.facts.block_count == 30
    assert details.metadata["general.architecture"] == "llama"
    assert "tokenizer.ggml.tokens" not in details.metadata  # the 49k-entry table stays out
    assert details.chat_template and "im_start" in details.chat_template

    copied = store.copy("smollm2", "mine/smol:v1")
    assert copied.name == "mine/smol:v1" and copied.path == entry.path
    assert [e.name for e in store.list()] == ["mine/smol:v1", "smollm2:latest"]

    store.delete("smollm2")
    assert entry.path.is_file()  # still used by mine/smol:v1
    store.delete("mine/smol:v1")
    assert not entry.path.exists() and store.list() == []
    assert list(store.tmp.iterdir()) == []
    with pytest.raises(ModelNotFoundError):
        store.delete("smollm2")


def test_import_refuses_bad_bytes_and_stores_nothing(store: Store, smollm2_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(IntegrityError):
        store.import_file(smollm2_gguf, "smollm2", sha256="0" * 64)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(smollm2_gguf.read_bytes()[: 3 * 1024 * 1024])
    with pytest.raises(MalformedInputError):
        store.import_file(truncated, "broken")
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello\n")
    with pytest.raises(MalformedInputError):
        store.import_file(not_gguf, "notes")
    assert list(store.blobs.iterdir()) == [] and list(store.manifests.iterdir()) == []
    assert list(store.tmp.iterdir()) == []


def test_manifest_write_is_atomic(store: Store, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store.import_file(smollm2_gguf, "smollm2")
    manifest = next(store.manifests.iterdir())
    before = manifest.read_bytes()

    def dies_half_way(obj: object, f, **kw: object) -> None:
        f.write('{"schemaVersion": 1, "na')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", dies_half_way)
    with pytest.raises(OSError):
        store.copy("smollm2", "smollm2")  # rewrites the same manifest
    assert manifest.read_bytes() == before
    assert list(store.tmp.iterdir()) == []
    monkeypatch.undo()
    assert store.get("smollm2").sha256 == SMOL_SHA


def test_broken_manifest_is_a_clear_error_and_skipped_in_list(store: Store, smollm2_gguf: Path) -> None:
    store.import_file(smollm2_gguf, "smollm2")
    bad = store.manifests / "bad%3Alatest.json"
    bad.write_text("{not json")
    assert [e.name for e in store.list()] == ["smollm2:latest"]
    with pytest.raises(MalformedInputError, match="broken manifest"):
        store.get("bad")


def test_resolve_names_paths_and_refuses_a_blob_changed_on_disk(
    store: Store, smollm2_gguf: Path, tmp_path: Path
) -> None:
    store.import_file(smollm2_gguf, "smollm2")
    src = store.resolve("smollm2")
    assert src.path == store.blobs / f"sha256-{SMOL_SHA}" and src.sha256 == SMOL_SHA and src.offset == 0
    assert src.name == "smollm2:latest"
    by_path = store.resolve(str(smollm2_gguf))
    assert by_path.path == smollm2_gguf.resolve() and by_path.sha256 == SMOL_SHA
    with pytest.raises(ModelNotFoundError, match="no model named 'nothing:latest'"):
        store.resolve("nothing")
    with pytest.raises(ModelNotFoundError, match="no GGUF file"):
        store.resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFoundError, match="has not been pulled"):
        store.resolve("hf:a/b/c.gguf", pull=False)

    blob = store.blobs / f"sha256-{SMOL_SHA}"
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0x55
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="expected " + SMOL_SHA):
        store.resolve("smollm2")


def test_names_are_validated() -> None:
    assert str(parse_name("llama3.2")) == "llama3.2:latest"
    assert str(parse_name("hf.co/owner/repo:Q4_K_M")) == "hf.co/owner/repo:Q4_K_M"
    for bad in ["", "../etc", "a/../b", "a b", "x:", "x:/y", "-x", ".hidden", "a/b/c/d/e"]:
        with pytest.raises(ConfigurationError):
            parse_name(bad)
    hf = parse_hf("hf:bartowski/Llama-3.2-1B-Instruct-GGUF/Llama-3.2-1B-Instruct-Q4_K_M.gguf@abc123")
    assert (hf.repo_id, hf.revision) == ("bartowski/Llama-3.2-1B-Instruct-GGUF", "abc123")
    for bad in ["hf:owner/repo", "hf:owner/repo/file.bin", "hf:o/r/../x.gguf", "hf:o/r/f.gguf@.."]:
        with pytest.raises(ConfigurationError):
            parse_hf(bad)


@pytest.mark.parametrize("bad", ["../../x", "/etc/passwd", "", "  ", "a" * 300, "a\x00b", "x:" + "t" * 200, "..:x"],
                         ids=repr)
def test_an_invalid_name_is_the_senders_error_everywhere(store: Store, smollm2_gguf: Path, bad: str) -> None:
    """Exit 2 on the CLI (ConfigurationError), 400 from the server (BadRequest): never an internal error."""
    from dx.errors import BadRequest, InvalidModelNameError

    store.import_file(smollm2_gguf, "smollm2")
    for call in (lambda: store.delete(bad), lambda: store.copy(bad, "ok:1"), lambda: store.copy("smollm2", bad),
                 lambda: store.get(bad), lambda: store.import_file(smollm2_gguf, bad)):
        with pytest.raises(InvalidModelNameError) as e:
            call()
        assert isinstance(e.value, ConfigurationError) and isinstance(e.value, BadRequest)
        assert e.value.exit_code == 2 and "\n" not in str(e.value) and len(str(e.value)) < 300
    assert [e.name for e in store.list()] == ["smollm2:latest"]


# ---- Ollama's models, read-only ---------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_ollama_models_are_listed_and_served_read_only(tmp_path: Path, smollm2_gguf: Path) -> None:
    ollama = make_ollama_tree(tmp_path / "ollama" / "models", smollm2_gguf)
    os.chmod(ollama / "blobs", 0o555)
    before = snapshot(ollama)
    store = Store(tmp_path / "dxhome", ollama_dir=ollama)

    entries = store.list()
    assert [e.name for e in entries] == [
        "hf.co/HuggingFaceTB/SmolLM2-GGUF:Q4_1", "smollm2:135m", "someone/smol:latest"]
    assert all(e.read_only and e.source == "ollama" and e.sha256 == SMOL_SHA for e in entries)
    assert entries[1].facts.family == "llama" and entries[1].facts.quant == "Q4_1"

    src = store.resolve("smollm2:135m")
    assert src.path == ollama / "blobs" / f"sha256-{SMOL_SHA}" and src.sha256 == SMOL_SHA
    assert store.show("smollm2:135m").facts.block_count == 30
    with pytest.raises(ReadOnlyModelError, match="ollama rm"):
        store.delete("smollm2:135m")
    copied = store.copy("smollm2:135m", "smol")
    assert not copied.read_only and copied.path.parent == store.blobs
    # A DX model of the same name shadows Ollama's.
    store.copy("smol", "someone/smol")
    assert [e.source for e in store.list() if e.name == "someone/smol:latest"] != ["ollama"]
    assert snapshot(ollama) == before
    os.chmod(ollama / "blobs", 0o755)


def test_ollama_models_dir_comes_from_the_environment(
    tmp_path: Path, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ollama = make_ollama_tree(tmp_path / "elsewhere", smollm2_gguf)
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama))
    monkeypatch.setenv("DX_HOME", str(tmp_path / "dxhome"))
    store = Store()
    assert store.root == tmp_path / "dxhome"
    assert "smollm2:135m" in [e.name for e in store.list()]


def test_stale_leftovers_of_killed_imports_are_swept(store: Store, smollm2_gguf: Path) -> None:
    store.import_file(smollm2_gguf, "smollm2")
    old = store.tmp / "import-dead.partial"
    old.write_bytes(b"half a model")
    os.utime(old, (1, 1))
    fresh = store.tmp / "import-running.partial"  # another process's import in progress: left alone
    fresh.write_bytes(b"x")
    hf_left = store.downloads / "models--a--b" / "blobs" / "abc.1234.incomplete"
    hf_left.parent.mkdir(parents=True)
    hf_left.write_bytes(b"y")
    os.utime(hf_left, (1, 1))
    assert store.sweep_stale() == 2
    assert not old.exists() and not hf_left.exists() and fresh.exists()


def test_a_path_with_a_sha256sums_beside_it_is_checked_against_it(
    store: Store, smollm2_gguf: Path, tmp_path: Path
) -> None:
    d = tmp_path / "release"
    link_or_copy(smollm2_gguf, d / "smol.gguf")
    (d / "SHA256SUMS").write_text(f"{'0' * 64}  smol.gguf\n")
    with pytest.raises(IntegrityError, match="expected " + "0" * 64):
        store.resolve(str(d / "smol.gguf"))
    (d / "SHA256SUMS").write_text(f"{SMOL_SHA}  smol.gguf\n")
    assert store.resolve(str(d / "smol.gguf")).sha256 == SMOL_SHA
