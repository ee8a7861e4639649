"""Step: check the model before anything is built around it.

The strict GGUF reader checks every count, length and offset (milliseconds).
The SHA-256 must equal the pin (recipe or ``--sha256``): when this exact file
state (path, size, mtime, inode) was hashed before, the remembered digest is
compared now; otherwise the embed step hashes the bytes as it copies them and
refuses a mismatch before the executable is sealed — one read of the model,
not two, and what is sealed is exactly what was checked.
"""

from __future__ import annotations

import dataclasses

import click

from dxbuild.context import BuildContext
from dxbuild.pipeline import Skip
from dxverify.errors import IntegrityError


def _echo(line: str) -> None:
    click.echo(line, err=True)


name = "verify model"


def verified_cache_dir():  # type: ignore[no-untyped-def]
    from dxbuild.paths import cache_dir

    return cache_dir() / "verified"


def run(ctx: BuildContext) -> None:
    resolved = ctx.facts.get("model")
    if resolved is None:
        raise Skip("no model")
    from dx.model_check import read_facts
    from dxverify import verified_cache

    facts = read_facts(resolved.path)
    ctx.facts["model_facts"] = facts
    _echo(f"    GGUF structure OK ({facts.arch or '?'}, {facts.parameter_size or '?'} params, {facts.quant or '?'})")
    known = verified_cache.lookup(verified_cache_dir(), resolved.path)
    if known is not None and resolved.sha256 is None:
        ctx.facts["model"] = dataclasses.replace(resolved, sha256=known)
        ctx.facts["model_sha256_checked"] = True
        _echo(f"    SHA-256 {known[:16]}… (hashed before, file unchanged)")
    elif known is not None:
        if known != resolved.sha256:
            raise IntegrityError(f"model {resolved.path} has SHA-256 {known}, expected {resolved.sha256}",
                                 hint="the file is corrupt or was replaced; delete it and mint again")
        ctx.facts["model_sha256_checked"] = True
        _echo(f"    SHA-256 {known[:16]}… matches the pin (hashed before, file unchanged)")
    else:
        pin = "the pin" if resolved.pinned else "nothing (unpinned local file): it is recorded"
        _echo(f"    SHA-256 is compared with {pin} while the model is embedded")
