"""Fixtures for the verifier: the pinned llama.cpp source tree (for its vocab GGUFs), via the builder's code."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pinned_llama_cpp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The llama.cpp tree of the pinned engine recipe, as dxbuild prepares it: fetched and checked once, cached.

    The vocab GGUFs under ``models/`` are upstream's whatever the recipe's source kind (DX's patches do
    not touch them), so a recipe moving from the sdist to git or a folder changes nothing here.
    """
    from dxbuild.engine.source import prepare_source
    from dxmatrix.recipes import load_engine_recipe

    log = tmp_path_factory.mktemp("source-log") / "prepare.log"
    tree = prepare_source(load_engine_recipe(), log=log, echo=None).path
    assert (tree / "ggml" / "src" / "gguf.cpp").is_file()
    return tree


@pytest.fixture(scope="session")
def vocab_ggufs(pinned_llama_cpp: Path) -> list[Path]:
    files = sorted((pinned_llama_cpp / "models").glob("ggml-vocab-*.gguf"))
    assert len(files) >= 10, "the pinned llama.cpp ships about 19 vocab GGUFs"
    return files
