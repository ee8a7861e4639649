"""Checking DX release signatures: detached Ed25519 and sigstore bundles.

Why these two: an Ed25519 ``.sig`` is 64 raw bytes over the file, so the same
signature is checkable by this module, by ``openssl pkeyutl -verify -rawin``
(what ``install.sh`` uses, no Python needed) and by anyone with the public
key. A sigstore bundle ties the file to a CI identity instead of a key we must
guard; it is made online in CI, but verifying it needs only the bundle and a
pinned trusted root, so it works offline here. Bundles holding a DSSE in-toto
statement (PyPI's and npm's attestations) are checked too: the statement must
name the file's SHA-256.

Both verifiers raise :class:`IntegrityError` naming the file that failed, and
:class:`MalformedInputError` for a key or signature file that is not one.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dxverify.errors import ConfigurationError, IntegrityError, MalformedInputError, UnsupportedError
from dxverify.hashing import sha256_file

ED25519_SIGNATURE_LEN = 64

#: The OIDC issuer of GitHub Actions workflow identities.
GITHUB_ACTIONS_ISSUER = "https://token.actions.githubusercontent.com"

#: A DSSE bundle's payload type when it carries an in-toto statement (PyPI and npm attestations).
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
_IN_TOTO_STATEMENTS = ("https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1")


@contextmanager
def file_bytes(path: Path) -> Iterator[bytes | mmap.mmap]:
    """The file's bytes without copying them: executables with a model are GBs."""
    try:
        f = open(path, "rb")  # noqa: SIM115 — closed by the with below
    except OSError as e:
        raise MalformedInputError(f"cannot read {path}: {e.strerror}") from e
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            yield m


def load_public_key(path: Path):  # -> Ed25519PublicKey (import kept lazy for the runtime)
    """Read a PEM SubjectPublicKeyInfo Ed25519 key (``dx-release.pub``)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MalformedInputError(f"cannot read public key {path}: {e.strerror}") from e
    try:
        key = load_pem_public_key(data)
    except ValueError as e:
        raise MalformedInputError(
            f"{path} is not a PEM public key",
            hint="expected the dx-release.pub written by `dxbuild keygen`",
        ) from e
    if not isinstance(key, Ed25519PublicKey):
        raise MalformedInputError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def read_signature(sig_path: Path) -> bytes:
    """A detached signature: exactly 64 raw bytes."""
    sig_path = Path(sig_path)
    try:
        sig = sig_path.read_bytes()
    except OSError as e:
        raise IntegrityError(f"signature {sig_path} cannot be read: {e.strerror}") from e
    if len(sig) != ED25519_SIGNATURE_LEN:
        raise IntegrityError(
            f"signature {sig_path} is {len(sig)} bytes, an Ed25519 signature is {ED25519_SIGNATURE_LEN}",
            hint="re-download it or re-sign with `dxbuild sign`",
        )
    return sig


def verify_file(path: Path, sig_path: Path, pubkey) -> None:
    """Check ``sig_path`` is ``pubkey``'s Ed25519 signature over ``path``'s bytes.

    ``pubkey`` is a path to a PEM public key or an already loaded key. Raises
    IntegrityError naming ``path`` when the signature does not match.
    """
    from cryptography.exceptions import InvalidSignature

    path, sig_path = Path(path), Path(sig_path)
    key = load_public_key(Path(pubkey)) if isinstance(pubkey, (str, os.PathLike)) else pubkey
    sig = read_signature(sig_path)
    if not path.is_file():
        raise IntegrityError(f"{path} is missing; {sig_path.name} signs a file that is not there")
    with file_bytes(path) as data:
        try:
            key.verify(sig, data)
        except InvalidSignature:
            raise IntegrityError(
                f"{path}: signature {sig_path.name} does not match this file and key",
                hint="the file, its signature or the key was altered; do not run it",
            ) from None


def default_trusted_root_path() -> Path:
    """The sigstore public-good trusted root used for offline verification.

    ``DX_SIGSTORE_TRUSTED_ROOT`` overrides. dxbuild passes the copy committed
    under ``ci/sigstore/trusted_root.json`` (pinned: reviewed when sigstore
    rotates its keys); without one, the copy the installed ``sigstore`` package
    ships (what its own ``--offline`` mode bootstraps from).
    """
    env = os.environ.get("DX_SIGSTORE_TRUSTED_ROOT")
    if env:
        return Path(env)
    import sigstore

    root = Path(sigstore.__file__).parent / "_store" / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"
    return root / "trusted_root.json"


def _one_line(e: object) -> str:
    return " ".join(str(e).split())


def statement_subject(payload_type: str, payload: bytes, sha256_hex: str) -> tuple[str, str]:
    """``(subject name, predicate type)`` of the in-toto statement's subject whose SHA-256 is ``sha256_hex``.

    A DSSE bundle signs a statement *about* files, not the file itself: it covers
    a file only when one of the statement's subjects has that file's digest.
    Raises ValueError (one line) when the payload is not a statement or no subject matches.
    """
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise ValueError(f"its DSSE payload is {payload_type!r}, not an in-toto statement")
    try:
        stmt = json.loads(payload)
    except ValueError:
        raise ValueError("its DSSE payload is not JSON") from None
    kind = stmt.get("_type") if isinstance(stmt, dict) else None
    if kind not in _IN_TOTO_STATEMENTS:
        raise ValueError(f"its DSSE payload is not an in-toto statement (_type {kind!r:.80})")
    subjects = stmt.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise ValueError("its in-toto statement names no subjects")
    signed = []
    for sub in subjects:
        digest = sub.get("digest") if isinstance(sub, dict) else None
        got = digest.get("sha256") if isinstance(digest, dict) else None
        if isinstance(got, str) and got.lower() == sha256_hex:
            return _one_line(sub.get("name", "")), _one_line(stmt.get("predicateType", ""))
        name = sub.get("name") if isinstance(sub, dict) else None
        signed.append(f"{name!r:.80} sha256 {got!r:.70}")
    more = f" (+{len(signed) - 3} more)" if len(signed) > 3 else ""
    raise ValueError(f"the file's SHA-256 is {sha256_hex}, its in-toto statement signs "
                     + ", ".join(signed[:3]) + more)


def verify_sigstore_bundle(
    path: Path,
    bundle_path: Path,
    *,
    identity: str,
    issuer: str = GITHUB_ACTIONS_ISSUER,
    trusted_root: Path | None = None,
) -> str:
    """Check a sigstore bundle over ``path`` offline, for an expected identity; returns what it signs.

    ``identity`` is the certificate's subject (for GitHub Actions the workflow
    ref URL, e.g. ``https://github.com/o/r/.github/workflows/release.yml@refs/tags/v1``).
    Two kinds of bundle: a message signature over the file's SHA-256 (what
    ``dxbuild sign`` makes), or a DSSE envelope holding an in-toto statement one of
    whose subjects has the file's SHA-256 (PyPI's and npm's attestations). Either way
    the certificate chain, the transparency-log entry, the signature and the
    identity + issuer are checked against ``trusted_root`` (no network).
    Raises IntegrityError (one line, naming ``path``) when it does not hold.
    """
    try:  # only `sigstore` itself: the compiled runtime leaves it (and pydantic) out
        from sigstore import hashes as sigstore_hashes
        from sigstore.errors import Error as SigstoreError
        from sigstore.models import Bundle, TrustedRoot
        from sigstore.verify import Verifier
        from sigstore.verify.policy import Identity
    except ImportError as e:
        raise UnsupportedError(
            f"checking sigstore bundles needs the `sigstore` package: {e}",
            hint="run `dxbuild verify-release` or `pip install sigstore`, or check the Ed25519 .sig instead",
        ) from e

    path, bundle_path = Path(path), Path(bundle_path)
    root_path = Path(trusted_root) if trusted_root else default_trusted_root_path()
    try:
        root = TrustedRoot.from_file(str(root_path))
    except (OSError, ValueError, SigstoreError) as e:
        raise ConfigurationError(f"sigstore trusted root {root_path} cannot be loaded: {_one_line(e)}") from e
    try:
        raw = bundle_path.read_bytes()
    except OSError as e:
        raise IntegrityError(f"sigstore bundle {bundle_path} cannot be read: {e.strerror}") from e
    try:
        doc = json.loads(raw)
        bundle = Bundle.from_json(raw)
    except (ValueError, SigstoreError) as e:
        raise IntegrityError(f"{bundle_path} is not a valid sigstore bundle: {_one_line(e)}") from e
    if not path.is_file():
        raise IntegrityError(f"{path} is missing; {bundle_path.name} signs a file that is not there")
    file_sha256 = sha256_file(path)
    verifier = Verifier(trusted_root=root)
    policy = Identity(identity=identity, issuer=issuer)
    try:
        if isinstance(doc, dict) and "dsseEnvelope" in doc:
            payload_type, payload = verifier.verify_dsse(bundle, policy)
        else:
            digest = sigstore_hashes.Hashed(algorithm=sigstore_hashes.HashAlgorithm.SHA2_256,
                                            digest=bytes.fromhex(file_sha256))
            verifier.verify_artifact(digest, bundle, policy)
            return "message signature over the file's SHA-256"
    except SigstoreError as e:
        raise IntegrityError(
            f"{path}: sigstore bundle {bundle_path.name} does not verify: {_one_line(e)}",
            hint=f"expected identity {identity} from {issuer}, trusted root {root_path}",
        ) from None
    try:  # the envelope's signature is good; now: is this file what it speaks about?
        name, predicate = statement_subject(payload_type, payload, file_sha256)
    except ValueError as e:
        raise IntegrityError(
            f"{path}: sigstore bundle {bundle_path.name} does not cover this file: {e}",
            hint="the file was altered, or this bundle is for another file",
        ) from None
    return f"in-toto statement over {name} ({predicate or 'no predicate type'})"
