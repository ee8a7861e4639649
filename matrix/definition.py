"""matrix/matrix.toml as typed data: the axes, runner labels, include/exclude rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dxmatrix.recipes import ArchName, OsName, TierName
from dxmatrix.resources import matrix_path
from dxmatrix.typed_config import json_schema, load_dataclass, read_toml
from dxverify.errors import ConfigurationError


@dataclass(frozen=True)
class Rule:
    """An include or exclude rule; a key left out matches every value."""

    tier: TierName | None = field(default=None, metadata={"doc": "tier name"})
    os: OsName | None = field(default=None, metadata={"doc": "operating system"})
    arch: ArchName | None = field(default=None, metadata={"doc": "CPU architecture"})

    def __post_init__(self) -> None:
        if self.tier is None and self.os is None and self.arch is None:
            raise ConfigurationError("empty rule: it names no tier, os or arch",
                                     hint="give at least one of tier, os, arch")

    def matches(self, tier: str, os_name: str, arch: str) -> bool:
        return ((self.tier is None or self.tier == tier) and (self.os is None or self.os == os_name)
                and (self.arch is None or self.arch == arch))

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in (("tier", self.tier), ("os", self.os), ("arch", self.arch)) if v)


@dataclass(frozen=True)
class MatrixFile:
    """matrix/matrix.toml: which tier × os × arch cells a release builds, and on which runners."""

    tiers: tuple[TierName, ...] = field(metadata={"doc": "tiers to expand"})
    os: tuple[OsName, ...] = field(metadata={"doc": "operating systems to expand"})
    arch: tuple[ArchName, ...] = field(metadata={"doc": "CPU architectures to expand"})
    runners: dict[str, str] = field(default_factory=dict, metadata={
        "doc": "GitHub Actions runner label per os-arch, e.g. linux-x86_64 = \"ubuntu-24.04\""})
    exclude: tuple[Rule, ...] = field(default=(), metadata={"doc": "cells to drop; each must match one"})
    include: tuple[Rule, ...] = field(default=(), metadata={
        "doc": "cells to add (tier, os and arch all given); each must be new"})
    source: str = field(default="", metadata={"internal": True}, compare=False)

    def __post_init__(self) -> None:
        for key in self.runners:
            os_name, _, arch = key.partition("-")
            if os_name not in ("linux", "macos", "windows") or arch not in ("x86_64", "arm64"):
                raise ConfigurationError(f"runners.{key}: not an os-arch pair",
                                         hint="use keys like linux-x86_64, macos-arm64, windows-arm64")
        for i, r in enumerate(self.include):
            if r.tier is None or r.os is None or r.arch is None:
                raise ConfigurationError(f"include[{i}] ({r.describe()}): an include must name tier, os and arch")


def load_matrix(path: Path | None = None) -> MatrixFile:
    path = path or matrix_path()
    return load_dataclass(MatrixFile, read_toml(path), f"{path}:", source=str(path))


def matrix_schema() -> dict[str, object]:
    return json_schema(MatrixFile, title="DX build matrix (matrix/matrix.toml)")
