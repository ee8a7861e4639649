"""Step: detached Ed25519 signatures over every executable and SHA256SUMS.

Writes ``<file>.sig`` (raw 64 bytes, checkable with ``openssl pkeyutl -verify
-rawin``) and the public key ``dx-release.pub`` next to them. The key comes from
``ctx.options.signing_key`` (``--key``), ``DX_SIGNING_KEY`` or
``DX_SIGNING_KEY_PEM`` (see dxbuild.release.keys); without one the step is skipped and
says how to sign — never an ephemeral key, whose signatures would prove nothing.

:func:`sign_directory` is the same for a directory that already exists
(``dxbuild sign DIR``): gathered CI outputs, after ``dxbuild manifest``.
"""

from __future__ import annotations

import os
from pathlib import Path

from dxbuild.context import ArtifactType, BuildContext, Skip
from dxbuild.release.keys import PUBLIC_KEY_NAME, SigningKey, find_signing_key, sign_file
from dxbuild.release.sums import SUMS_NAME, write_sums

name = "sign"

#: Suffixes of files that are trust metadata themselves, not things to sign.
TRUST_SUFFIXES = (".sig", ".sigstore.json")


def _write_public_key(directory: Path, key: SigningKey) -> Path:
    dest = Path(directory) / PUBLIC_KEY_NAME
    pem = key.public_pem()
    if dest.exists() and dest.read_bytes() == pem:
        return dest
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    tmp.write_bytes(pem)
    os.replace(tmp, dest)
    return dest


def is_release_file(p: Path) -> bool:
    """A file a release directory publishes (not a signature, sums, key or hidden temp)."""
    n = p.name
    return (
        p.is_file()
        and not n.startswith(".")
        and n not in (SUMS_NAME, PUBLIC_KEY_NAME)
        and not n.endswith(TRUST_SUFFIXES)
    )


def sign_directory(directory: Path, key: SigningKey | None) -> list[Path]:
    """Checksum and sign every release file in ``directory``; returns the files written.

    With ``key=None`` only SHA256SUMS is (re)written. Stale ``.sig`` files whose
    file is gone are removed, so the directory never holds a signature over nothing.
    """
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if is_release_file(p))
    if not files:
        from dxverify.errors import ConfigurationError

        raise ConfigurationError(f"{directory} holds no files to sign")
    written = [write_sums(directory, files)]
    if key is None:
        return written
    for f in [*files, directory / SUMS_NAME]:
        written.append(sign_file(f, key))
    for stale in directory.glob("*.sig"):
        if not (directory / stale.name[: -len(".sig")]).exists():
            stale.unlink()
    written.append(_write_public_key(directory, key))
    return written


def run(ctx: BuildContext) -> None:
    key = find_signing_key(ctx.options.signing_key)
    if key is None:
        raise Skip(
            "no signing key (pass --key, or set DX_SIGNING_KEY / DX_SIGNING_KEY_PEM; "
            "`dxbuild keygen` makes one); SHA256SUMS is written but not signed"
        )
    targets = [a.path for a in ctx.of(ArtifactType.EXECUTABLE, ArtifactType.CHECKSUMS)]
    if not targets:
        raise Skip("nothing to sign")
    for t in targets:
        ctx.add(ArtifactType.SIGNATURE, sign_file(t, key), signs=t.name)
    ctx.add(ArtifactType.PUBLIC_KEY, _write_public_key(ctx.out_dir, key))
