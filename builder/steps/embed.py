"""Step: append the verified GGUF to the runtime, unchanged, at a 64 KiB boundary.

Writes runtime + padding + model + metadata + trailer (``dxverify.trailer``) to
a temporary file inside the output directory; write_output renames it into
place. The model is hashed while it is copied and must match the verified
SHA-256, and the whole file's SHA-256 comes out of the same pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path

import click

from dxbuild.context import ArtifactType, BuildContext
from dxbuild.pipeline import Skip


def _echo(line: str) -> None:
    click.echo(line, err=True)


name = "embed model"


def run(ctx: BuildContext) -> None:
    resolved = ctx.facts.get("model")
    if resolved is None:
        raise Skip("no model: the bare runtime is written as is")
    from dx import __version__ as dx_version
    from dxverify.trailer import write_executable

    bundle = ctx.one(ArtifactType.BUNDLE)
    engine = ctx.one(ArtifactType.ENGINE_DIR)
    metadata = {
        "model": resolved.name,
        "source": resolved.source,
        "sha256": resolved.sha256,
        "tier": ctx.cell.tier,
        "os": ctx.cell.os,
        "arch": ctx.cell.arch,
        "dx_version": dx_version,
        "llama_cpp_commit": str(engine.extra.get("llama_cpp_commit") or "unknown"),
        "engine_key": str(engine.extra.get("key", "")),
        "bundle_key": str(bundle.extra.get("key", "")),
    }
    if resolved.license:
        metadata["license"] = resolved.license
    fd, tmp = tempfile.mkstemp(prefix=".dx-mint-", suffix=".part", dir=ctx.out_dir)
    ctx.facts["staged"] = Path(tmp)  # write_output renames it; the runner removes it on failure
    whole = hashlib.sha256()
    with os.fdopen(fd, "wb", buffering=0) as f:
        em = write_executable(bundle.path, resolved.path, f, metadata,
                              expected_sha256=resolved.sha256, file_hasher=whole)
        os.fchmod(f.fileno(), 0o755)
    ctx.facts["staged_sha256"] = whole.hexdigest()
    if resolved.sha256 is None:  # an unpinned local file: its digest is what was just embedded
        ctx.facts["model"] = dataclasses.replace(resolved, sha256=em.sha256)
    _remember_verified(resolved.path, em.sha256)
    ctx.facts["embedded"] = em
    _echo(f"    model at offset {em.offset} ({em.length / 1e6:.1f} MB), trailer sealed")


def _remember_verified(model: Path, digest: str) -> None:
    """The model just hashed to its pin: the next mint's verify step can skip the hash."""
    from dxbuild.steps.verify_model import verified_cache_dir
    from dxverify import verified_cache

    verified_cache.remember(verified_cache_dir(), model, digest)
