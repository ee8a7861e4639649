"""Step: the tier's llama.cpp engine directory, from the cache or compiled now.

``dxbuild.engine.build.build_engine`` keys the cache by everything that decides the
engine's bytes; a hit costs seconds and runs no compiler.
"""

from __future__ import annotations

import json

import click

from dxbuild.context import ArtifactType, BuildContext


def _echo(line: str) -> None:
    click.echo(line, err=True)


name = "engine"


def run(ctx: BuildContext) -> None:
    from dxbuild.engine.build import build_engine
    from dxmatrix.recipes import load_engine_recipe

    path = build_engine(ctx.cell, load_engine_recipe(), echo=_echo)
    info = json.loads((path / "engine.json").read_text())
    ctx.add(ArtifactType.ENGINE_DIR, path, key=str(info["key"]),
            llama_cpp_commit=str(info.get("llama_cpp_commit") or "unknown"), size=info.get("size_bytes"))
