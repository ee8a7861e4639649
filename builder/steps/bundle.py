"""Step: the Nuitka onefile runtime for this tier's engine, cached by content key."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import click

from dxbuild.context import ArtifactType, BuildContext


def _echo(line: str) -> None:
    click.echo(line, err=True)


name = "bundle runtime"


def run(ctx: BuildContext) -> None:
    from dxbuild.bundle.nuitka import cuda_libs_plan, ensure_bundle
    from dxbuild.toolchains.host import HOST_ARCH

    engine = ctx.one(ArtifactType.ENGINE_DIR)
    cuda = ctx.cuda_libs = cuda_libs_plan(engine.path, ctx.options.cuda_libs)  # thin/fat, or None
    if ctx.cell.arch != HOST_ARCH:  # Nuitka has no cross mode: it runs under qemu in a root of that arch
        from dxbuild.bundle.foreign import ensure_foreign_bundle

        bundle = ensure_foreign_bundle(engine.path, tier=ctx.cell.tier, engine_key=engine.extra["key"],
                                       arch=ctx.cell.arch, echo=_echo)
    else:
        bundle = ensure_bundle(engine.path, tier=ctx.cell.tier, engine_key=engine.extra["key"], echo=_echo,
                               cuda_libs=cuda and cuda["form"])
    ctx.add(ArtifactType.BUNDLE, bundle.path, key=bundle.key, reused=bundle.reused)
    how = "reused from the cache" if bundle.reused else "compiled"
    if cuda:
        mb = sum(f["bytes"] for f in cuda["runtime_libs"]) / 1e6
        _echo(f"    cuda libraries: {cuda['form']} — cuBLAS/cudart ({mb:.0f} MB) "
              + ("found at run time (dx.host.cuda_libs)" if cuda["form"] == "thin" else "carried inside"))
    _echo(f"    {how}: {bundle.path} ({bundle.path.stat().st_size / 1e6:.1f} MB)")
    ctx.python_distributions = python_distributions(bundle.path)


def python_distributions(binary: Path) -> list[dict[str, Any]]:
    """The Python distributions compiled into this bundle, for the SBOM.

    Worked out once per bundle (it walks every installed distribution's
    metadata, about a second) and kept in the bundle's cache entry beside it:
    the list belongs to the bundle, and later mints reuse both.
    """
    from dxbuild.atomic import write_text_atomic

    kept = binary.with_name("python-distributions.json")
    try:
        dists = json.loads(kept.read_text(encoding="utf-8"))
        if isinstance(dists, list) and all(isinstance(d, dict) and "name" in d for d in dists):
            return dists
    except (OSError, ValueError):
        pass
    from dxbuild.steps.sbom import runtime_distributions

    dists = runtime_distributions()
    with contextlib.suppress(OSError):  # a read-only cache still mints; the next mint works it out again
        write_text_atomic(kept, json.dumps(dists, indent=1) + "\n")
    return dists
