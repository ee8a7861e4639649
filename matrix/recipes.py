"""The engine recipes: where llama.cpp comes from, DX's patches, and the tiers.

``recipes/engine.toml`` pins the engine source and lists the patches;
``recipes/tiers.toml`` describes each backend tier (CMake flags, the OS/arch it
applies to, its toolchain, its size budget, and what it needs at run time).
Both load into frozen dataclasses through :mod:`dxmatrix.typed_config`, so a
typo'd key is an error naming the file and key, and the committed JSON schemas
(``recipes/schema/*.schema.json``, regenerated with ``dxbuild schema --write``)
come from these same classes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dxmatrix.resources import recipes_dir
from dxmatrix.typed_config import json_schema, load_dataclass, read_toml, suggest
from dxverify.errors import ConfigurationError

OS_NAMES = ("linux", "macos", "windows")
ARCH_NAMES = ("x86_64", "arm64")
TIER_NAMES = ("cpu", "cuda12", "cuda13", "vulkan", "rocm", "metal")
TOOLCHAINS = ("host", "cuda13-pypi", "cuda12-host", "rocm-host", "vulkan-host", "xcode")

SHA256_PATTERN = "[0-9a-f]{64}"
SHA1_PATTERN = "[0-9a-f]{40}"
CMAKE_VALUE_DOC = "CMake cache values, e.g. GGML_CUDA = \"ON\""

OsName = Literal["linux", "macos", "windows"]
ArchName = Literal["x86_64", "arm64"]
TierName = Literal["cpu", "cuda12", "cuda13", "vulkan", "rocm", "metal"]
ToolchainName = Literal["host", "cuda13-pypi", "cuda12-host", "rocm-host", "vulkan-host", "xcode"]


def _sha(doc: str) -> dict[str, Any]:
    return {"doc": doc, "pattern": SHA256_PATTERN, "pattern_doc": "64 lowercase hex digits (a SHA-256)"}


@dataclass(frozen=True)
class EngineSource:
    """Where the llama.cpp source comes from; always hash-checked before use."""

    kind: Literal["sdist", "git", "dir"] = field(
        metadata={"doc": "sdist: a PyPI sdist that vendors llama.cpp; git: URL + commit; dir: a local tree"})
    sha256: str = field(default="", metadata=_sha(
        "sdist: SHA-256 of the .tar.gz; dir: DX tree hash (the error on mismatch prints it)"))
    package: str = field(default="", metadata={"doc": "sdist: PyPI project name"})
    version: str = field(default="", metadata={"doc": "sdist: exact version"})
    subdir: str = field(default="", metadata={"doc": "folder inside the unpacked source holding llama.cpp"})
    url: str = field(default="", metadata={"doc": "git: repository URL"})
    commit: str = field(default="", metadata={
        "doc": "git: full 40-hex commit; sdist: the llama.cpp commit it vendors (informational)",
        "pattern": f"(?:{SHA1_PATTERN})?", "pattern_doc": "a full 40-hex commit id"})
    path: str = field(default="", metadata={"doc": "dir: path of the llama.cpp tree (relative to the recipe)"})

    def __post_init__(self) -> None:
        need = {"sdist": ("package", "version", "sha256"), "git": ("url", "commit"), "dir": ("path", "sha256")}
        for key in need[self.kind]:
            if not getattr(self, key):
                raise ConfigurationError(f"missing required key {key!r} for kind = {self.kind!r}",
                                         hint=f"add {key} = \"...\" (a {self.kind} source needs {', '.join(need[self.kind])})")

    @property
    def identity(self) -> str:
        """What names this source's bytes in cache keys."""
        if self.kind == "git":
            return f"git:{self.url}@{self.commit}"
        return f"{self.kind}:{self.sha256}"


@dataclass(frozen=True)
class EngineRecipe:
    """recipes/engine.toml: the engine source, DX's patches and the baseline CMake flags."""

    source: EngineSource
    patches: tuple[str, ...] = field(default=(), metadata={
        "doc": "patch files under recipes/patches/, applied in this order",
        "pattern": r"[A-Za-z0-9._-]+\.patch", "pattern_doc": "a file name ending in .patch"})
    targets: tuple[str, ...] = field(default=("llama-server", "llama-bench"),
                                     metadata={"doc": "CMake targets built and installed into bin/"})
    cmake: dict[str, str] = field(default_factory=dict, metadata={"doc": "baseline " + CMAKE_VALUE_DOC})
    recipe_dir: Path = field(default=Path("."), metadata={"internal": True}, compare=False)

    def patch_paths(self) -> list[Path]:
        return [self.recipe_dir / "patches" / p for p in self.patches]

    def with_patches(self, extra: tuple[str, ...]) -> EngineRecipe:
        """This recipe with a cell's tier patches after its own (what that cell's engine is built from)."""
        if not extra:
            return self
        return dataclasses.replace(self, patches=self.patches + tuple(p for p in extra if p not in self.patches))


@dataclass(frozen=True)
class TierRuntime:
    """What a machine needs to run this tier's engine."""

    min_nvidia_driver: int | None = field(default=None, metadata={
        "doc": "minimum NVIDIA driver major version (cuda tiers)", "minimum": 1})
    needs: tuple[str, ...] = field(default=(), metadata={"doc": "other run-time needs, in words"})


@dataclass(frozen=True)
class Tier:
    """One backend tier: its CMake flags, where it applies, what builds and runs it."""

    name: TierName = field(metadata={"from_key": True})
    summary: str = field(metadata={"doc": "one line for tables and release notes"})
    os: tuple[OsName, ...] = field(metadata={"doc": "operating systems this tier is built for"})
    arch: tuple[ArchName, ...] = field(metadata={"doc": "CPU architectures this tier is built for"})
    toolchain: ToolchainName = field(metadata={"doc": "how the compiler for this tier is obtained"})
    size_budget_mb: int = field(metadata={"doc": "stripped engine directory must stay under this (MB)",
                                          "minimum": 1})
    thin_size_budget_mb: int | None = field(default=None, metadata={
        "doc": "cuda tiers: a thin executable without a model (cuBLAS/cudart left out) must stay under this (MB)",
        "minimum": 1})
    cmake: dict[str, str] = field(default_factory=dict, metadata={"doc": CMAKE_VALUE_DOC})
    cmake_by_arch: dict[str, dict[str, str]] = field(default_factory=dict, metadata={
        "doc": "extra CMake values per arch (x86_64, arm64)"})
    cmake_by_os: dict[str, dict[str, str]] = field(default_factory=dict, metadata={
        "doc": "extra CMake values per os (linux, macos, windows)"})
    cmake_by_target: dict[str, dict[str, str]] = field(default_factory=dict, metadata={
        "doc": "extra CMake values for one os-arch (e.g. linux-arm64), applied last"})
    patches: tuple[str, ...] = field(default=(), metadata={
        "doc": "patch files under recipes/patches/ for this tier only, applied after the engine's",
        "pattern": r"[A-Za-z0-9._-]+\.patch", "pattern_doc": "a file name ending in .patch"})
    patches_by_target: dict[str, tuple[str, ...]] = field(default_factory=dict, metadata={
        "doc": "more patches for one os-arch (e.g. linux-arm64), applied after the tier's",
        "pattern": r"[A-Za-z0-9._-]+\.patch", "pattern_doc": "a file name ending in .patch"})
    cuda_archs: tuple[str, ...] = field(default=(), metadata={
        "doc": "CMAKE_CUDA_ARCHITECTURES for release builds (narrow locally with --cuda-archs)",
        "pattern": r"[0-9]{2,3}[a-z]?(?:-(?:real|virtual))?", "pattern_doc": "like 90, 120a or 86-real"})
    runtime: TierRuntime = field(default_factory=TierRuntime)
    toolkit_wheels: dict[str, tuple[str, ...]] = field(default_factory=dict, metadata={
        "doc": "cuda13-pypi: pinned toolkit wheels, \"name==version\" -> allowed SHA-256s (one per platform)",
        "pattern": SHA256_PATTERN, "pattern_doc": "64 lowercase hex digits (a SHA-256)"})

    def __post_init__(self) -> None:
        for spec in self.toolkit_wheels:
            if not re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][0-9A-Za-z.]*", spec):
                raise ConfigurationError(f"toolkit_wheels: {spec!r} is not a pinned requirement",
                                         hint='write it as "name==version"')
        for table, allowed in (("cmake_by_arch", ARCH_NAMES), ("cmake_by_os", OS_NAMES)):
            for key in getattr(self, table):
                if key not in allowed:
                    raise ConfigurationError(f"{table}.{key}: unknown {table[9:]}{suggest(key, allowed)}",
                                             hint="use one of " + ", ".join(allowed))
        targets = [f"{o}-{a}" for o in OS_NAMES for a in ARCH_NAMES]
        for table in ("cmake_by_target", "patches_by_target"):
            for key in getattr(self, table):
                if key not in targets:
                    raise ConfigurationError(f"{table}.{key}: unknown os-arch{suggest(key, targets)}",
                                             hint="use one of " + ", ".join(targets))
        if self.toolchain in ("cuda13-pypi", "cuda12-host") and not self.cuda_archs:
            raise ConfigurationError("cuda_archs is required for a CUDA tier", hint='add cuda_archs = ["90"]')

    def flags_for(self, os_name: str, arch: str) -> dict[str, str]:
        """This tier's own CMake values on one os/arch (baseline not included)."""
        flags = dict(self.cmake)
        flags.update(self.cmake_by_os.get(os_name, {}))
        flags.update(self.cmake_by_arch.get(arch, {}))
        flags.update(self.cmake_by_target.get(f"{os_name}-{arch}", {}))
        return flags

    def patches_for(self, os_name: str, arch: str) -> tuple[str, ...]:
        """This tier's own patches on one os/arch (the engine recipe's come first, not included)."""
        return self.patches + self.patches_by_target.get(f"{os_name}-{arch}", ())


@dataclass(frozen=True)
class TiersFile:
    """recipes/tiers.toml: every backend tier DX can build."""

    tiers: dict[str, Tier] = field(metadata={"doc": "one table per tier: [tiers.cpu], [tiers.cuda13], ..."})

    def __post_init__(self) -> None:
        if not self.tiers:
            raise ConfigurationError("tiers: no tier defined", hint="add a [tiers.cpu] table")


def load_engine_recipe(path: Path | None = None) -> EngineRecipe:
    """Load and validate ``recipes/engine.toml``; every patch it names must exist."""
    path = path or recipes_dir() / "engine.toml"
    recipe = load_dataclass(EngineRecipe, read_toml(path), f"{path}:", recipe_dir=path.parent)
    for i, p in enumerate(recipe.patch_paths()):
        if not p.is_file():
            raise ConfigurationError(f"{path}: patches[{i}]: {p} does not exist",
                                     hint="add the file under recipes/patches/ or remove it from the list")
    return recipe


def load_tiers(path: Path | None = None) -> dict[str, Tier]:
    """Load and validate ``recipes/tiers.toml`` into {name: Tier}; every patch a tier names must exist."""
    path = path or recipes_dir() / "tiers.toml"
    tiers = load_dataclass(TiersFile, read_toml(path), f"{path}:").tiers
    for tier in tiers.values():
        named = list(tier.patches) + [p for ps in tier.patches_by_target.values() for p in ps]
        for name in named:
            if not (path.parent / "patches" / name).is_file():
                raise ConfigurationError(f"{path}: tiers.{tier.name}: patch {name} does not exist",
                                         hint="add the file under recipes/patches/ or remove it from the list")
    return tiers


@functools.lru_cache(maxsize=4)
def _cached_tiers(path: Path) -> dict[str, Tier]:
    return load_tiers(path)


def get_tier(name: str, path: Path | None = None) -> Tier:
    """The tier called ``name``, or a ConfigurationError with a suggestion."""
    path = path or recipes_dir() / "tiers.toml"
    tiers = _cached_tiers(path)
    if name not in tiers:
        raise ConfigurationError(f"unknown tier {name!r}{suggest(name, tiers)}",
                                 hint="known tiers: " + ", ".join(tiers))
    return tiers[name]


def schemas() -> dict[str, dict[str, Any]]:
    """The JSON schemas for editors, by file name under ``recipes/schema/``."""
    return {
        "engine.schema.json": json_schema(EngineRecipe, title="DX engine recipe (recipes/engine.toml)"),
        "tiers.schema.json": json_schema(TiersFile, title="DX tiers (recipes/tiers.toml)"),
    }


def render_schema(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


def asdict(obj: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a recipe object (for engine.json and --json output)."""
    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))
