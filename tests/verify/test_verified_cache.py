"""The verified-hash cache: a hit only for the very same file state; atomic, bounded, tolerant of damage."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dxverify import verified_cache


def test_remember_then_lookup(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"a" * 100)
    cache = tmp_path / "cache"
    assert verified_cache.lookup(cache, f) is None
    verified_cache.remember(cache, f, "ab" * 32)
    assert verified_cache.lookup(cache, f) == "ab" * 32
    assert verified_cache.lookup(cache, tmp_path / "." / "m.gguf") == "ab" * 32  # same real path
    assert verified_cache.lookup(cache, f, offset=10) is None  # another region
    assert not [p for p in cache.iterdir() if p.name != verified_cache.FILE_NAME]  # no temp files left


def test_any_change_of_the_file_misses(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"a" * 100)
    cache = tmp_path / "cache"
    verified_cache.remember(cache, f, "ab" * 32)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert verified_cache.lookup(cache, f) is None
    verified_cache.remember(cache, f, "cd" * 32)
    f.write_bytes(b"b" * 101)
    assert verified_cache.lookup(cache, f) is None
    g = tmp_path / "g.gguf"
    g.write_bytes(b"b" * 101)
    os.replace(g, f)  # same size maybe, new inode
    assert verified_cache.lookup(cache, f) is None
    entries = json.loads((cache / verified_cache.FILE_NAME).read_text())["entries"]
    assert len(entries) == 1  # older states of the same file were dropped


def test_damaged_record_is_a_miss_and_gets_rewritten(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"a")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / verified_cache.FILE_NAME).write_text("{not json")
    assert verified_cache.lookup(cache, f) is None
    verified_cache.remember(cache, f, "ef" * 32)
    assert verified_cache.lookup(cache, f) == "ef" * 32


def test_bounded(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(verified_cache, "MAX_ENTRIES", 3)
    cache = tmp_path / "cache"
    for i in range(5):
        f = tmp_path / f"m{i}"
        f.write_bytes(b"x")
        verified_cache.remember(cache, f, f"{i:064x}")
    entries = json.loads((cache / verified_cache.FILE_NAME).read_text())["entries"]
    assert len(entries) == 3


def test_missing_file_is_never_remembered(tmp_path: Path) -> None:
    verified_cache.remember(tmp_path / "cache", tmp_path / "nope", "ab" * 32)
    assert verified_cache.lookup(tmp_path / "cache", tmp_path / "nope") is None
