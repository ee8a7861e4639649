"""One build cell: everything a build needs to know, resolved before work starts.

Recipe (engine baseline + tier) + matrix (runner) + command-line flags
(``--cuda-archs``) resolve into one frozen :class:`Cell`. Nothing after this
point reads a recipe or a flag again, so a cell printed by ``dxbuild matrix``
is exactly what ``dxbuild engine`` builds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dxmatrix.recipes import EngineRecipe, Tier
from dxverify.errors import ConfigurationError, UnsupportedError

_CUDA_ARCH = re.compile(r"[0-9]{2,3}[a-z]?(?:-(?:real|virtual))?")


@dataclass(frozen=True)
class Cell:
    """A tier × os × arch build, fully resolved (frozen; safe to hash and compare)."""

    tier: str
    os: str
    arch: str
    runner: str                             # GitHub Actions runner label ("" when unknown)
    toolchain: str
    cmake: tuple[tuple[str, str], ...]      # final CMake values, sorted by name
    cuda_archs: tuple[str, ...] = ()
    min_nvidia_driver: int | None = None
    runtime_needs: tuple[str, ...] = ()
    size_budget_mb: int = 0
    tier_patches: tuple[str, ...] = ()      # the tier's own patches, applied after the engine recipe's

    @property
    def name(self) -> str:
        return f"{self.tier}-{self.os}-{self.arch}"

    @property
    def cmake_dict(self) -> dict[str, str]:
        return dict(self.cmake)

    def as_json(self) -> dict[str, object]:
        """The cell as a GitHub Actions matrix entry (and for --json output)."""
        return {
            "tier": self.tier,
            "os": self.os,
            "arch": self.arch,
            "runner": self.runner,
            "toolchain": self.toolchain,
            "cuda_archs": ";".join(self.cuda_archs),
            "min_driver": self.min_nvidia_driver if self.min_nvidia_driver is not None else "-",
            "size_budget_mb": self.size_budget_mb,
        }


#: what users may call an architecture -> the matrix's name for it
ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64", "arm64": "arm64", "aarch64": "arm64"}


def normalize_arch(text: str) -> str:
    """``--arch aarch64`` and ``--arch arm64`` are one architecture (the matrix says arm64)."""
    arch = ARCH_ALIASES.get(text.strip().lower())
    if arch is None:
        raise ConfigurationError(f"--arch: unknown architecture {text!r}", hint="use x86_64 or arm64 (aarch64)")
    return arch


def parse_cuda_archs(text: str) -> tuple[str, ...]:
    """``--cuda-archs "86;90"`` or ``"86,90"`` → ("86", "90"), each checked."""
    parts = tuple(p.strip() for p in re.split(r"[;,\s]+", text) if p.strip())
    if not parts:
        raise ConfigurationError("--cuda-archs: empty list", hint='give e.g. --cuda-archs 90 or "86;90"')
    for p in parts:
        if not _CUDA_ARCH.fullmatch(p):
            raise ConfigurationError(f"--cuda-archs: {p!r} is not a CUDA architecture",
                                     hint="use compute capabilities like 86, 90, 120a or 90-real")
    return parts


def resolve_cell(
    engine: EngineRecipe,
    tier: Tier,
    os_name: str,
    arch: str,
    *,
    runners: Mapping[str, str] | None = None,
    cuda_archs: Sequence[str] | None = None,
) -> Cell:
    """Combine the engine baseline, the tier and the flags into one Cell (pure)."""
    if os_name not in tier.os:
        raise UnsupportedError(f"tier {tier.name} is not built for {os_name}",
                               hint=f"it applies to: {', '.join(tier.os)}")
    if arch not in tier.arch:
        raise UnsupportedError(f"tier {tier.name} is not built for {arch}",
                               hint=f"it applies to: {', '.join(tier.arch)}")
    flags = dict(engine.cmake)
    flags.update(tier.flags_for(os_name, arch))
    archs = tuple(tier.cuda_archs)
    if cuda_archs is not None:
        if not tier.cuda_archs:
            raise ConfigurationError(f"--cuda-archs applies only to CUDA tiers, not {tier.name}")
        archs = tuple(cuda_archs)
    if archs:
        flags["CMAKE_CUDA_ARCHITECTURES"] = ";".join(archs)
    return Cell(
        tier=tier.name,
        os=os_name,
        arch=arch,
        runner=(runners or {}).get(f"{os_name}-{arch}", ""),
        toolchain=tier.toolchain,
        cmake=tuple(sorted(flags.items())),
        cuda_archs=archs,
        min_nvidia_driver=tier.runtime.min_nvidia_driver,
        runtime_needs=tier.runtime.needs,
        size_budget_mb=tier.size_budget_mb,
        tier_patches=tier.patches_for(os_name, arch),
    )
