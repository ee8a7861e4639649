"""One model the store can serve (``ModelEntry``): what DX's store and Ollama's read-only store both list."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dx.models.check import ModelFacts


@dataclass(frozen=True)
class ModelEntry:
    """One model the store can serve."""

    name: str                    # "name:tag"
    sha256: str
    size: int
    modified: float              # seconds since the epoch
    path: Path                   # the blob (or Ollama's blob)
    source: str                  # "hf:…", "file:…", "ollama", "copy:…"
    read_only: bool = False      # True for Ollama's models
    facts: ModelFacts = field(default_factory=ModelFacts)
    registry: dict[str, Any] | None = None  # pulled from Ollama's registry: manifest digest, layers, params…
    offset: int = 0              # in place (an ``in_file`` manifest): the bytes at offset..offset+length of path
    length: int | None = None
    modelfile: dict[str, Any] | None = None  # made by `dx create` / /api/create: the record of dx.models.create

    @property
    def in_place(self) -> bool:
        """Named where the bytes are (a model inside a minted executable), not a blob of the store."""
        return self.length is not None

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "size": self.size,
            "modified": self.modified,
            "path": str(self.path),
            "source": self.source,
            "read_only": self.read_only,
            "offset": self.offset,
            "length": self.length,
            "family": self.facts.family,
            "quant": self.facts.quant,
            "parameter_size": self.facts.parameter_size,
            "context_length": self.facts.context_length,
        }
