"""The mint pipeline: an ordered list of steps, each one small module.

Every step has ``name`` and ``run(ctx)``; a step that does not apply raises
``Skip(reason)``, which the runner prints. Adding a step is one module plus one
line in ``STEPS``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import click

from dxbuild.context import BuildContext, Skip

__all__ = ["Skip", "Step", "default_steps", "run_steps"]

class Step(Protocol):
    name: str

    def run(self, ctx: BuildContext) -> None: ...


def default_steps() -> list[Step]:
    """The release pipeline in order. Imported lazily so `dxbuild --help` is fast."""
    import importlib

    names = [
        "resolve_model",   # --model → a local GGUF (recipe, hf:, path), hash-checked on download
        "verify_model",    # strict GGUF structure + SHA-256 against the pin (cached)
        "engine",          # the tier's llama.cpp engine: cache hit or CMake build
        "bundle",          # Nuitka onefile runtime + engine, cached by content key
        "embed",           # append the GGUF at 64 KiB + metadata + trailer (temp file)
        "write_output",    # rename into DIR/dx-[model-]tier-os-arch; path, size, SHA-256
        "checksums",       # SHA256SUMS
        "sign",            # Ed25519 .sig (skipped without a key)
        "sigstore_sign",   # sigstore bundles (CI with an OIDC identity only)
        "sbom",            # <artifact>.cdx.json, CycloneDX 1.6
        "manifest",        # <artifact>.json facts + manifest.json + manifest.txt
        "size_report",     # size-report.{json,md,svg}; fails when the tier is over budget
        "bench_report",    # bench-report.{json,md,svg} (skipped with --no-bench)
    ]
    # Each entry: one module under dxbuild.steps, one line here.
    steps: list[Step] = [importlib.import_module(f"dxbuild.steps.{n}") for n in names]  # type: ignore[misc]
    return steps


def run_steps(
    ctx: BuildContext,
    steps: Sequence[Step],
    echo: Callable[[str], None] = lambda s: click.echo(s, err=True),
) -> None:
    total = len(steps)
    for i, step in enumerate(steps, 1):
        t0 = time.monotonic()
        echo(f"[{i}/{total}] {step.name} ...")
        try:
            step.run(ctx)
        except Skip as s:
            echo(f"[{i}/{total}] {step.name}: skipped — {s}")
            continue
        echo(f"[{i}/{total}] {step.name}: done in {time.monotonic() - t0:.1f}s")
