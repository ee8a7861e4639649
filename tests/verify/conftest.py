"""Fixtures for the verifier: the pinned llama.cpp source tree (for its vocab GGUFs), via the builder's code."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pinned_llama_cpp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pristine llama.cpp tree of the pinned engine recipe: sdist fetched and hash-checked once, cached."""
    from dxbuild.engine.source import download_sdist, unpack_sdist
    from dxbuild.paths import cache_dir
    from dxmatrix.recipes import load_engine_recipe

    src = load_engine_recipe().source
    if src.kind != "sdist":
        pytest.skip(f"engine recipe source is {src.kind}, the vocab test needs the pinned sdist")
    cache = cache_dir()
    root = cache / "sources" / src.sha256
    if not root.is_dir():
        log = tmp_path_factory.mktemp("source-log") / "download.log"
        unpack_sdist(download_sdist(src, cache, log, echo=None), src.sha256, root)
    tops = [d for d in root.iterdir() if d.is_dir()]
    assert len(tops) == 1, f"unexpected sdist layout in {root}"
    tree = tops[0] / src.subdir
    assert (tree / "ggml" / "src" / "gguf.cpp").is_file()
    return tree


@pytest.fixture(scope="session")
def vocab_ggufs(pinned_llama_cpp: Path) -> list[Path]:
    files = sorted((pinned_llama_cpp / "models").glob("ggml-vocab-*.gguf"))
    assert len(files) >= 10, "the pinned llama.cpp ships about 19 vocab GGUFs"
    return files
