"""Step: put the executable at ``DIR/dx-[<model>-]<tier>-<os>-<arch>`` atomically.

Everything is written under a temporary name in the output directory and
renamed into place, so the directory never holds a half-written executable.
Prints the path, size and SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import click

from dxbuild.context import ArtifactType, BuildContext


def _echo(line: str) -> None:
    click.echo(line, err=True)


name = "write output"


def output_name(cell: object, model: str | None) -> str:
    """``dx-smollm2-cpu-linux-x86_64`` with a model, ``dx-cpu-linux-x86_64`` without."""
    tier, os_name, arch = cell.tier, cell.os, cell.arch  # type: ignore[attr-defined]
    stem = f"{tier}-{os_name}-{arch}"
    return f"dx-{safe_model_name(model)}-{stem}" if model else f"dx-{stem}"


def safe_model_name(model: str) -> str:
    """A model name as it may appear in a file name (``llama3.2`` stays, ``a/b`` does not)."""
    keep = "".join(c if (c.isalnum() or c in "._-") else "-" for c in model).strip(".-")
    return keep or "model"


def run(ctx: BuildContext) -> None:
    final = ctx.out_dir / output_name(ctx.cell, ctx.served_name())  # a --modelfile's name, else the model's
    staged = ctx.staged
    if staged is None:
        from dxbuild.run_cmd import sigterm_as_exit

        with sigterm_as_exit():  # SIGTERM unwinds like Ctrl-C: the partly written copy is removed
            staged, digest = _stage_copy(ctx.one(ArtifactType.BUNDLE).path, ctx.out_dir)
        ctx.staged = staged
    else:
        assert ctx.staged_sha256 is not None  # embed hashed it while writing
        digest = ctx.staged_sha256
    os.replace(staged, final)
    ctx.staged = None
    size = final.stat().st_size
    ctx.add(ArtifactType.EXECUTABLE, final, sha256=digest, size=size, tier=ctx.cell.tier,
            os=ctx.cell.os, arch=ctx.cell.arch, model=ctx.served_name())
    _echo(f"    {final}")
    _echo(f"    size {size} bytes ({size / 1e6:.1f} MB)")
    _echo(f"    sha256 {digest}")


def _stage_copy(src: Path, out_dir: Path) -> tuple[Path, str]:
    fd, tmp = tempfile.mkstemp(prefix=".dx-mint-", suffix=".part", dir=out_dir)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as dst, open(src, "rb") as s:
            while chunk := s.read(8 << 20):
                h.update(chunk)
                dst.write(chunk)
            os.fchmod(dst.fileno(), 0o755)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp), h.hexdigest()
