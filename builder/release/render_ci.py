"""Render the GitHub Actions workflows from ``ci/workflows/*.j2`` and the matrix.

The release workflow's build matrix is exactly ``dxbuild matrix --json``
(:func:`dxmatrix.expand.github_matrix`), so the matrix file is the one place a
cell is added or removed. The rendered files are committed; ``--check``
compares instead of writing, so a stale workflow fails CI instead of shipping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dxbuild.paths import project_root
from dxbuild.templates import environment, write_atomically
from dxverify.errors import ConfigurationError

# Every action pinned to one major version, in one place.
ACTIONS = {
    "checkout": "actions/checkout@v5",
    "setup_python": "actions/setup-python@v6",
    "cache": "actions/cache@v5",
    "upload_artifact": "actions/upload-artifact@v6",
    "download_artifact": "actions/download-artifact@v7",
    "msvc_dev_cmd": "ilammy/msvc-dev-cmd@v1",
    "cuda_toolkit": "Jimver/cuda-toolkit@v0.2.24",
    "vulkan_sdk": "jakoch/install-vulkan-sdk-action@v1",
    "pypi_publish": "pypa/gh-action-pypi-publish@release/v1",   # PyPA's documented ref for trusted publishing
}

# Toolchain versions the CI installs for the tiers whose toolchain is the host's.
TOOLCHAIN_VERSIONS = {
    "cuda12_version": "12.8",
    "vulkan_sdk_version": "1.4.309.0",
    "rocm_version": "6.4.1",
}

# What the release template knows how to set up, per toolchain, on which OS. A
# matrix cell outside this table is an error at render time, not a red CI run.
TOOLCHAIN_SETUP: dict[str, tuple[str, ...]] = {
    "host": ("linux", "macos", "windows"),
    "cuda13-pypi": ("linux", "windows"),
    "cuda12-host": ("linux", "windows"),
    "vulkan-host": ("linux", "windows"),
    "rocm-host": ("linux",),
    "xcode": ("macos",),
}

#: what llama.cpp's own Vulkan CI sets for lavapipe (a CPU-type device is skipped without VISIBLE_DEVICES)
LAVAPIPE_ENV = {"GGML_VK_VISIBLE_DEVICES": "0", "GGML_VK_DISABLE_F16": "1", "GGML_VK_DISABLE_COOPMAT": "1"}

PYTHON_VERSION = "3.11"
BENCH_MODEL = "smollm2"  # small enough for a hosted runner; the bench report's model
RELEASE_RUNNER = "ubuntu-24.04"


@dataclass(frozen=True)
class Workflow:
    template: str   # under ci/
    output: str     # under the project root


WORKFLOWS = (
    Workflow("workflows/release.yml.j2", ".github/workflows/release.yml"),
    Workflow("workflows/ci.yml.j2", ".github/workflows/ci.yml"),
)


def _flow(entry: dict[str, Any]) -> str:
    """One matrix entry as a YAML flow mapping; values as JSON scalars (valid YAML)."""
    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in entry.items()) + "}"


def matrix_entries() -> list[dict[str, Any]]:
    """The release matrix, as ``dxbuild matrix --json`` prints it."""
    from dxmatrix.definition import load_matrix
    from dxmatrix.expand import expand, github_matrix
    from dxmatrix.recipes import load_engine_recipe, load_tiers

    return github_matrix(expand(load_matrix(), load_tiers(), load_engine_recipe()))["include"]


#: the manylinux image engine wheels are built in: glibc 2.28, so pip takes them on most Linux systems
MANYLINUX_IMAGE = "quay.io/pypa/manylinux_2_28"


def wheel_cells(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One engine-wheel job per Linux cell of a published tier (``dxbuild.engine.wheel.PUBLISHED_TIERS``)."""
    from dxbuild.engine.wheel import PUBLISHED_TIERS

    return [{"tier": e["tier"], "arch": e["arch"], "runner": e["runner"],
             "image": f"{MANYLINUX_IMAGE}_{'aarch64' if e['arch'] == 'arm64' else e['arch']}"}
            for e in entries if e["os"] == "linux" and e["tier"] in PUBLISHED_TIERS]


def check_toolchains(entries: list[dict[str, Any]]) -> None:
    for e in entries:
        oses = TOOLCHAIN_SETUP.get(e["toolchain"])
        if oses is None or e["os"] not in oses:
            raise ConfigurationError(
                f"matrix cell {e['tier']}-{e['os']}-{e['arch']}: the release workflow cannot set up "
                f"toolchain {e['toolchain']!r} on {e['os']}",
                hint="add its setup step to ci/workflows/release.yml.j2 and TOOLCHAIN_SETUP in "
                     "builder/release/render_ci.py, or exclude the cell in matrix/matrix.toml")


def render_workflows(entries: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """{output path relative to the project root: text} for every workflow."""
    entries = matrix_entries() if entries is None else entries
    check_toolchains(entries)
    env = environment()
    env.filters["flow"] = _flow
    values = {
        "cells": entries,
        "wheel_cells": wheel_cells(entries),
        "toolchains": sorted({e["toolchain"] for e in entries}),
        "actions": ACTIONS,
        "python_version": PYTHON_VERSION,
        "release_runner": RELEASE_RUNNER,
        "bench_model": BENCH_MODEL,
        "lavapipe_env_args": " ".join(f"--env {k}={v}" for k, v in LAVAPIPE_ENV.items()),
        **TOOLCHAIN_VERSIONS,
    }
    return {w.output: env.get_template(w.template).render(**values) for w in WORKFLOWS}


def stale_workflows(root: Path | None = None) -> list[str]:
    """Outputs whose committed text differs from what would be rendered now."""
    root = root or project_root()
    stale = []
    for rel, text in render_workflows().items():
        p = root / rel
        if not p.is_file() or p.read_text(encoding="utf-8") != text:
            stale.append(rel)
    return stale


def write_workflows(root: Path | None = None) -> list[Path]:
    root = root or project_root()
    written = []
    for rel, text in render_workflows().items():
        p = root / rel
        if p.is_file() and p.read_text(encoding="utf-8") == text:
            continue
        write_atomically(p, text)
        written.append(p)
    return written
