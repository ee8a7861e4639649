"""One build's shared state: the frozen request, the resolved cell, what steps hand on, and every artifact.

Steps read and write one BuildContext; every file a step produces is recorded
in ``ctx.artifacts`` with a type, so later steps ask "all executables" instead
of globbing the output folder (GoReleaser's artifact list).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: `dxbuild --help` imports this module and needs neither
    from dxbuild.models import ResolvedModel
    from dxmatrix.cell import Cell


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


@dataclass(frozen=True)
class MintOptions:
    """What one mint was asked for (``dxbuild [OPTIONS]``), parsed once; the CLI's flags by name."""

    tier: str | None = None                 # --gpu: cpu, cuda13, … or auto (None: cpu)
    model: str | None = None                # --model: recipe, registry name, hf:…, or a .gguf path
    out_dir: Path = Path("dist")            # -o
    sha256: str | None = None               # --sha256: the model's expected SHA-256
    signing_key: Path | None = None         # --key (else DX_SIGNING_KEY…)
    no_bench: bool = False                  # --no-bench
    previous_size_report: Path | None = None
    cuda_archs: str | None = None           # --cuda-archs "90" (a local CUDA build)
    webui: bool = False                     # --webui
    arch: str | None = None                 # --arch: another CPU architecture than this machine's
    cuda_libs: str | None = None            # --cuda-libs thin|fat
    draft: str | None = None                # --draft: a draft model, embedded next to --model
    mmproj: str | None = None               # --mmproj: a multimodal projector for --model, embedded after it
    adapter: str | None = None              # --adapter: a LoRA adapter for --model, embedded last
    modelfile: Path | None = None           # --modelfile: FROM/ADAPTER/DRAFT become the three above (dxbuild.modelfile)
    name: str | None = None                 # --name: the name a --modelfile executable serves its model under


@dataclass(frozen=True)
class MintModelfile:
    """A parsed ``--modelfile`` (``dxbuild.modelfile.load``): its file's digest, the served name, the record."""

    path: Path                 # the Modelfile (its path is never written into the executable)
    sha256: str                # of its bytes: the manifest and the SBOM name it
    size: int
    name: str | None           # the served name; None: the FROM model's own name (known once it is resolved)
    record: dict[str, Any] = field(default_factory=dict)   # dx.models.create's shape; embed fills the digests


@dataclass
class BuildContext:
    """Everything one build knows. ``cell`` is the frozen, validated plan; the rest is handed on by steps."""

    cell: Cell
    out_dir: Path
    options: MintOptions = field(default_factory=MintOptions)
    artifacts: list[Artifact] = field(default_factory=list)
    # what steps hand to later steps (each set by the step named)
    model: ResolvedModel | None = None      # resolve_model; verify_model and embed confirm its SHA-256
    draft: ResolvedModel | None = None      # resolve_model (--draft)
    projector: ResolvedModel | None = None  # resolve_model (--mmproj)
    adapter: ResolvedModel | None = None    # resolve_model (--adapter)
    modelfile: MintModelfile | None = None  # mint (--modelfile): the parsed Modelfile; embed puts its record in
    staged: Path | None = None              # embed's temporary file; write_output renames it (removed on failure)
    staged_sha256: str | None = None        # embed: the staged file's SHA-256, hashed while it was written
    cuda_libs: dict[str, Any] | None = None  # bundle: the thin/fat CUDA library plan (size_report reads it)
    python_distributions: list[dict[str, Any]] | None = None  # bundle: the runtime's Python packages (sbom)

    def served_name(self) -> str | None:
        """The name the executable serves its model under: a Modelfile's name, else the model's own."""
        if self.modelfile is not None and self.modelfile.name:
            return self.modelfile.name
        return self.model.name if self.model is not None else None

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
