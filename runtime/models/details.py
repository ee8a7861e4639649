"""What Ollama clients call a model's ``details``, read from the GGUF itself.

``/api/tags``, ``/api/show`` and ``dx list`` describe every model the same
way, whether it is the one inside a minted executable, one in DX's store or
one of Ollama's: family from ``general.architecture``, parameter size from the
tensor shapes (Ollama style: ``135M``, ``3.2B``), quantisation from
``general.file_type`` as llama.cpp names it (``Q4_1``, ``Q4_K_M``). Only the
header is read (the strict reader checks it), and the answer is kept per
(path, offset, length, size, mtime, inode), so a listing opens each file once.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dxverify.errors import DXError
from dxverify.units import parameter_size  # the one formatter (dx inspect uses it too)

_CACHE: dict[tuple[Any, ...], ModelDetails] = {}
_LOCK = threading.Lock()
_MAX_CACHED = 256


@dataclass(frozen=True)
class ModelDetails:
    family: str = ""
    parameter_size: str = ""
    parameter_count: int = 0
    quantization_level: str = ""

    def ollama(self) -> dict[str, Any]:
        """The ``details`` object of Ollama's /api/tags and /api/show."""
        return {
            "parent_model": "", "format": "gguf", "family": self.family,
            "families": [self.family] if self.family else None,
            "parameter_size": self.parameter_size, "quantization_level": self.quantization_level,
        }


def details_for(path: Path | str, offset: int = 0, length: int | None = None) -> ModelDetails:
    """The details of the GGUF at ``path`` (``offset``/``length``: one inside an executable).

    Raises the reader's MalformedInputError for a damaged file, OSError when unreadable.
    """
    st = os.stat(path)
    key = (os.fspath(path), offset, length, st.st_size, st.st_mtime_ns, st.st_ino)
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    from dxverify.gguf import read_gguf

    with read_gguf(path, offset=offset, length=length) as gguf:
        s = gguf.summary()
    found = ModelDetails(
        family=s.architecture or "",
        parameter_size=parameter_size(s.parameters) if s.parameters else "",
        parameter_count=s.parameters,
        quantization_level=s.file_type or "",
    )
    with _LOCK:
        if len(_CACHE) >= _MAX_CACHED:
            _CACHE.clear()
        _CACHE[key] = found
    return found


def details_or_empty(path: Path | str, offset: int = 0, length: int | None = None) -> ModelDetails:
    """``details_for``, or empty details for a file that cannot be read (a listing still lists it)."""

    try:
        return details_for(path, offset, length)
    except (DXError, OSError):
        return ModelDetails()
