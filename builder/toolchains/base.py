"""A ready toolchain, as every toolchain module describes it (the bottom of ``dxbuild.toolchains``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Toolchain:
    """A ready toolchain: how to call CMake and what it adds to the build."""

    name: str
    cmake: str                                        # absolute path of cmake
    ninja: str                                        # absolute path of ninja
    env: dict[str, str] = field(default_factory=dict)           # added to the build environment
    cmake_defs: dict[str, str] = field(default_factory=dict)    # extra -D values (compiler paths...)
    versions: dict[str, str] = field(default_factory=dict)      # part of the engine cache key
    cuda_flags: str = ""                              # extra CMAKE_CUDA_FLAGS
    runtime_libs: tuple[str, ...] = ()                # shared libraries shipped in the engine's lib/
    strip: str = ""                                   # the target's strip ("" = the host's)
