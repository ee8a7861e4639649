"""Step: write ``SHA256SUMS`` over the release's executables (format: ``dxbuild.release.sums``)."""

from __future__ import annotations

from dxbuild.context import ArtifactType, BuildContext, Skip
from dxbuild.release.sums import SUMS_NAME, parse_sums, write_sums
from dxverify.errors import IntegrityError

name = "checksums"


def run(ctx: BuildContext) -> None:
    exes = ctx.of(ArtifactType.EXECUTABLE)
    if not exes:
        raise Skip("no executables were minted")
    files = {a.path.name: a.path for a in exes}
    # Minting several cells into one directory keeps one SHA256SUMS for all of them:
    # earlier entries whose files are still there are kept (and hashed again, never trusted).
    existing = ctx.out_dir / SUMS_NAME
    if existing.is_file():
        try:
            for fname in parse_sums(existing):
                if fname not in files and (ctx.out_dir / fname).is_file():
                    files[fname] = ctx.out_dir / fname
        except IntegrityError:
            pass  # an unreadable old file is simply replaced
    made_now = {a.path.name: a.extra["sha256"] for a in exes if a.extra.get("sha256")}
    dest = write_sums(ctx.out_dir, list(files.values()), known=made_now)
    ctx.add(ArtifactType.CHECKSUMS, dest)
