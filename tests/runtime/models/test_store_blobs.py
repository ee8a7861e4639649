"""``ModelStore.receive_blob`` (what ``POST /api/blobs`` streams into) and ``name_modelfile``: nothing half-written.

Each failure — more than the free space, a short body, a wrong digest, a damaged GGUF, the disk filling
up mid-way — leaves neither a blob nor a partial file; only verified bytes are renamed into ``blobs/``.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.gguf_handcraft import tiny_model

from dx.models.store import BlobTooLargeError, ModelStore
from dxverify.errors import IntegrityError, MalformedInputError


def _store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "home", ollama_dir=False)


def _chunks(data: bytes, size: int = 7) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def _nothing_left(store: ModelStore) -> bool:
    return not list(store.tmp.iterdir()) and not list(store.blobs.iterdir())


def test_a_good_upload_enters_the_store(tmp_path: Path) -> None:
    store, data = _store(tmp_path), tiny_model().build().data
    sha = hashlib.sha256(data).hexdigest()
    blob = store.receive_blob(_chunks(data), sha, len(data))
    assert blob == store.blobs / f"sha256-{sha}" and blob.read_bytes() == data
    assert store.blob_path(f"sha256:{sha}") == blob and not list(store.tmp.iterdir())


def test_more_than_the_free_space_is_refused_before_reading(tmp_path: Path) -> None:
    store = _store(tmp_path)

    def never() -> Iterator[bytes]:
        raise AssertionError("the body must not be read")
        yield b""

    with pytest.raises(BlobTooLargeError, match="bytes free") as e:
        store.receive_blob(never(), "ab" * 32, 10 ** 17)
    assert e.value.http_status == 507
    assert _nothing_left(store)


@pytest.mark.parametrize(("cut", "sha_of", "error", "words"), [
    (0.5, "whole", IntegrityError, "the upload ended after"),
    (1.0, "other", IntegrityError, "digest mismatch"),
])
def test_short_or_wrong_bodies_leave_nothing(tmp_path: Path, cut: float, sha_of: str, error: type, words: str) -> None:
    store, data = _store(tmp_path), tiny_model().build().data
    sha = hashlib.sha256(data if sha_of == "whole" else b"other").hexdigest()
    with pytest.raises(error, match=words):
        store.receive_blob(_chunks(data[: int(len(data) * cut)]), sha, len(data))
    assert _nothing_left(store)


def test_a_damaged_gguf_leaves_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = bytearray(tiny_model().build().data)
    data[4] = 99  # the version
    with pytest.raises(MalformedInputError):
        store.receive_blob(_chunks(bytes(data)), hashlib.sha256(data).hexdigest(), len(data))
    assert _nothing_left(store)


def test_a_full_disk_mid_way_leaves_nothing(tmp_path: Path) -> None:
    store, data = _store(tmp_path), tiny_model().build().data

    def filling() -> Iterator[bytes]:
        yield data[:100]
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as e:
        store.receive_blob(filling(), hashlib.sha256(data).hexdigest(), len(data))
    assert e.value.errno == errno.ENOSPC
    assert _nothing_left(store)


def test_name_modelfile_names_the_base_blob_without_copying(tmp_path: Path, smollm2_gguf: Path) -> None:
    store = _store(tmp_path)
    base = store.import_file(smollm2_gguf, "smol:135m")
    entry = store.name_modelfile("mine", base, "create:smol:135m", {"system": "S", "params": {"seed": 1}})
    assert entry.path == base.path and entry.sha256 == base.sha256 and not entry.in_place
    assert store.own("mine").modelfile == {"system": "S", "params": {"seed": 1}}
    assert len(list(store.blobs.iterdir())) == 1
    assert store.copy("mine", "mine2").modelfile == {"system": "S", "params": {"seed": 1}}
    store.delete("mine2")
    store.delete("smol:135m")
    assert base.path.is_file()  # still named by the created model
    store.delete("mine")
    assert not base.path.exists()


def test_a_created_models_draft_is_checked_at_every_start(tmp_path: Path) -> None:
    """(Its adapters too, by dx.models.adapters.adapters_for: tests/runtime/models/test_model_adapters.py.)"""
    from dx.engine.process import _verify_created_parts
    from dx.errors import ModelNotFoundError
    from dx.models.defaults import ModelDefaults

    store, data = _store(tmp_path), tiny_model().build().data
    blob = store.receive_blob(_chunks(data), hashlib.sha256(data).hexdigest(), len(data))
    _verify_created_parts(ModelDefaults(draft=str(blob)))  # fine
    gone = str(store.blobs / ("sha256-" + "e" * 64))
    with pytest.raises(ModelNotFoundError, match=f"draft blob sha256:{'e' * 64} is gone") as e:
        _verify_created_parts(ModelDefaults(draft=gone))
    assert str(store.root) not in str(e.value)
    blob.write_bytes(data[:-8] + b"XXXXXXXX")  # the bytes changed after they entered the store
    with pytest.raises(IntegrityError, match=r"draft blob sha256:.* is damaged") as e2:
        _verify_created_parts(ModelDefaults(draft=str(blob)))
    assert str(store.root) not in str(e2.value)
