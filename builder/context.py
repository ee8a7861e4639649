"""One build's shared state: the resolved cell, its inputs, and every artifact.

Steps read and write one BuildContext; every file a step produces is recorded
in ``ctx.artifacts`` with a type, so later steps ask "all executables" instead
of globbing the output folder (GoReleaser's artifact list).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ArtifactType(str, enum.Enum):
    ENGINE_DIR = "engine-dir"        # cached llama.cpp install (bin/, lib/)
    BUNDLE = "bundle"                # Nuitka onefile runtime, no model
    EXECUTABLE = "executable"        # a minted file users run (bare or with model)
    MODEL = "model"                  # a verified GGUF input
    CHECKSUMS = "checksums"          # SHA256SUMS
    SIGNATURE = "signature"          # detached Ed25519 .sig
    SIGSTORE_BUNDLE = "sigstore-bundle"
    SBOM = "sbom"
    MANIFEST = "manifest"
    REPORT = "report"                # size / bench reports (json, md, svg)
    PUBLIC_KEY = "public-key"


class Skip(Exception):
    """Raised by a step that does not apply to this build; the message says why (the runner prints it)."""


@dataclass
class Artifact:
    type: ArtifactType
    path: Path
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.path.name


@dataclass
class BuildContext:
    """Everything one build knows. ``cell`` is the frozen, validated plan."""

    cell: Any                       # dxmatrix.recipes / dxmatrix Cell (frozen)
    out_dir: Path
    model: str | None = None        # what the user asked for (name, hf:..., path)
    options: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # step outputs for later steps

    def add(self, type: ArtifactType, path: Path, **extra: Any) -> Artifact:
        art = Artifact(type=type, path=Path(path), extra=dict(extra))
        self.artifacts.append(art)
        return art

    def of(self, *types: ArtifactType) -> list[Artifact]:
        return [a for a in self.artifacts if a.type in types]

    def one(self, type: ArtifactType) -> Artifact:
        found = self.of(type)
        if len(found) != 1:
            raise LookupError(f"expected one {type.value} artifact, found {len(found)}")
        return found[0]
