"""Step: the Nuitka onefile runtime for this tier's engine, cached by content key."""

from __future__ import annotations

import click

from dxbuild.context import ArtifactType, BuildContext


def _echo(line: str) -> None:
    click.echo(line, err=True)


name = "bundle runtime"


def run(ctx: BuildContext) -> None:
    from dxbuild.bundle import ensure_bundle

    engine = ctx.one(ArtifactType.ENGINE_DIR)
    bundle = ensure_bundle(engine.path, tier=ctx.cell.tier, engine_key=engine.extra["key"], echo=_echo)
    ctx.facts["bundle"] = bundle
    ctx.add(ArtifactType.BUNDLE, bundle.path, key=bundle.key, reused=bundle.reused)
    how = "reused from the cache" if bundle.reused else "compiled"
    _echo(f"    {how}: {bundle.path} ({bundle.path.stat().st_size / 1e6:.1f} MB)")
