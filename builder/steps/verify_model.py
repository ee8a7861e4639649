"""Step: check the model before anything is built around it.

The strict GGUF reader checks every count, length and offset (milliseconds).
The SHA-256 must equal the pin (recipe or ``--sha256``): when this exact file
state (path, size, mtime, inode) was hashed before, the remembered digest is
compared now; otherwise the embed step hashes the bytes as it copies them and
refuses a mismatch before the executable is sealed — one read of the model,
not two, and what is sealed is exactly what was checked.

A ``--draft`` gets the same checks, and then the pair is checked as llama.cpp
would before speculating (``dxverify.spec_pair``): a draft whose vocabulary
differs is refused here, with one line, before the engine, the bundle or any
file in the output directory is made.

A ``--mmproj`` gets the structure check and its SHA-256 the same way, and then
``dxverify.projector``: a GGUF that is not a vision projector, or one whose output
width is not the model's ``n_embd``, is refused here (llama.cpp would refuse it
only when the served model first loads).

An ``--adapter`` gets the SHA-256 the same way, and then ``dxverify.adapter``: a GGUF
that is not a LoRA adapter, or one made for another architecture or other tensor
shapes, is refused here (llama.cpp would refuse it only when the engine starts).
"""

from __future__ import annotations

import dataclasses

import click

from dxbuild.context import BuildContext, Skip
from dxbuild.models import ResolvedModel
from dxverify.errors import IntegrityError


def _echo(line: str) -> None:
    click.echo(line, err=True)


name = "verify model"


def verified_cache_dir():  # type: ignore[no-untyped-def]
    from dxbuild.paths import cache_dir

    return cache_dir() / "verified"


def run(ctx: BuildContext) -> None:
    resolved = ctx.model
    if resolved is None:
        raise Skip("no model")
    ctx.model = _verify(resolved, "")
    projected = ctx.projector
    if projected is not None:
        from dxverify.projector import check_projector

        kind = check_projector(projected.path, label=f"--mmproj {projected.path}", model=resolved.path)
        ctx.projector = _verify(projected, "projector ")
        _echo(f"    projector {projected.name}: a vision projector ({kind or 'unnamed type'}) that fits"
              f" {resolved.name}")
    adapted = getattr(ctx, "adapter", None)
    if adapted is not None:
        from dxverify.adapter import check_adapter

        info = check_adapter(adapted.path, label=f"--adapter {adapted.path}", model=resolved.path)
        ctx.adapter = _verify_hash(adapted, "adapter ")
        _echo(f"    adapter {adapted.name}: {info.describe()} that fits {resolved.name}")
    draft = ctx.draft
    if draft is None:
        return
    ctx.draft = _verify(draft, "draft ")
    from dxverify.spec_pair import check_pair

    check_pair(resolved.path, draft.path)
    _echo(f"    draft {draft.name} shares {resolved.name}'s vocabulary (llama.cpp's speculative compatibility check)")


def _verify(resolved: ResolvedModel, label: str) -> ResolvedModel:
    """The model with its digest when the verified cache knows it; structure checked, a known digest compared."""
    from dx.models.check import read_facts

    facts = read_facts(resolved.path)
    _echo(f"    {label}GGUF structure OK ({facts.arch or '?'}, {facts.parameter_size or '?'} params,"
          f" {facts.quant or '?'})")
    return _verify_hash(resolved, label)


def _verify_hash(resolved: ResolvedModel, label: str) -> ResolvedModel:
    """A known digest from the verified cache, compared with the pin; else hashed while embedded."""
    from dxverify import verified_cache

    known = verified_cache.lookup(verified_cache_dir(), resolved.path)
    if known is not None and resolved.sha256 is None:
        _echo(f"    {label}SHA-256 {known[:16]}… (hashed before, file unchanged)")
        return dataclasses.replace(resolved, sha256=known)
    if known is not None:
        if known != resolved.sha256:
            raise IntegrityError(f"{label}model {resolved.path} has SHA-256 {known}, expected {resolved.sha256}",
                                 hint="the file is corrupt or was replaced; delete it and mint again")
        _echo(f"    {label}SHA-256 {known[:16]}… matches the pin (hashed before, file unchanged)")
        return resolved
    pin = "the pin" if resolved.pinned else "nothing (unpinned local file): it is recorded"
    _echo(f"    {label}SHA-256 is compared with {pin} while the model is embedded")
    return resolved
