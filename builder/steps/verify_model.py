"""Step: check the model before anything is built around it.

The strict GGUF reader checks every count, length and offset (milliseconds);
the SHA-256 is compared with the pinned one (recipe or ``--sha256``), computed
once per (path, size, mtime, inode) and cached in ``dxverify.verified_cache``.
The embed step hashes the bytes again as it copies them, so what is sealed
into the executable is exactly what was verified.
"""

from __future__ import annotations

import click

from dxbuild.context import BuildContext
from dxbuild.pipeline import Skip


def _echo(line: str) -> None:
    click.echo(line, err=True)


name = "verify model"


def run(ctx: BuildContext) -> None:
    resolved = ctx.facts.get("model")
    if resolved is None:
        raise Skip("no model")
    from dx.model_check import read_facts, verify_model

    facts = read_facts(resolved.path)
    digest = verify_model(resolved.path, expected_sha256=resolved.sha256)
    ctx.facts["model_facts"] = facts
    ctx.facts["model_sha256"] = digest
    pin = "pinned" if resolved.pinned else "not pinned: computed now"
    _echo(f"    GGUF structure OK ({facts.arch or '?'}, {facts.parameter_size or '?'} params,"
             f" {facts.quant or '?'}); SHA-256 {digest[:16]}… ({pin})")
