"""Release signing keys: making a pair, finding the one to sign with, signing.

Where the private key comes from, in order: ``--key PATH``, ``DX_SIGNING_KEY``
(a path), ``DX_SIGNING_KEY_PEM`` (the PEM text itself: what a CI secret holds).
A passphrase-protected key is unlocked with ``DX_SIGNING_KEY_PASSPHRASE``.

Without any key, signing is *skipped visibly*, never done with a throwaway
key: a signature from a key nobody published proves nothing, yet a ``.sig``
next to a file looks like a promise. Checksums are still written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dxbuild.atomic import write_bytes_atomic
from dxverify.errors import ConfigurationError, IntegrityError
from dxverify.signatures import file_bytes

PUBLIC_KEY_NAME = "dx-release.pub"
PRIVATE_KEY_NAME = "dx-release.key"
ENV_KEY_PATH = "DX_SIGNING_KEY"
ENV_KEY_PEM = "DX_SIGNING_KEY_PEM"
ENV_PASSPHRASE = "DX_SIGNING_KEY_PASSPHRASE"


@dataclass(frozen=True)
class SigningKey:
    """A loaded private key and where it came from (for messages, never the key)."""

    private: Ed25519PrivateKey
    origin: str

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    def public_pem(self) -> bytes:
        return public_pem(self.public)


def public_pem(key: Ed25519PublicKey) -> bytes:
    """PEM SubjectPublicKeyInfo: what ``openssl pkeyutl -pubin`` reads."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def keygen(out_dir: Path, *, passphrase: bytes | None = None, force: bool = False) -> tuple[Path, Path]:
    """Write ``dx-release.key`` (PKCS#8 PEM, mode 0600) and ``dx-release.pub``.

    Refuses to overwrite an existing key unless ``force``: losing a release key
    silently is worse than an error.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / PRIVATE_KEY_NAME, out_dir / PUBLIC_KEY_NAME
    if not force:
        for p in (priv_path, pub_path):
            if p.exists():
                raise ConfigurationError(f"{p} already exists", hint="pass --force to replace the key pair")
    key = Ed25519PrivateKey.generate()
    enc = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    write_bytes_atomic(priv_path, pem, 0o600)
    write_bytes_atomic(pub_path, public_pem(key.public_key()), 0o644)
    return priv_path, pub_path


def load_private_key(pem: bytes, origin: str, passphrase: bytes | None = None) -> SigningKey:
    """Parse an Ed25519 private key; every failure names ``origin``, never the key bytes."""
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase or None)
    except TypeError as e:
        if passphrase:
            raise ConfigurationError(f"signing key {origin} is not encrypted, but a passphrase was given") from e
        raise ConfigurationError(
            f"signing key {origin} is passphrase-protected", hint=f"set {ENV_PASSPHRASE}"
        ) from e
    except ValueError as e:
        hint = "check the passphrase" if passphrase else "expected the PEM written by `dxbuild keygen`"
        raise ConfigurationError(f"signing key {origin} cannot be loaded", hint=hint) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"signing key {origin} is a {type(key).__name__}, not Ed25519")
    return SigningKey(private=key, origin=origin)


def find_signing_key(key_path: Path | None = None, env: dict[str, str] | None = None) -> SigningKey | None:
    """The key to sign with (``--key``, then environment), or None when none is configured."""
    env = dict(os.environ if env is None else env)
    passphrase = env.get(ENV_PASSPHRASE, "").encode() or None
    if key_path is None and env.get(ENV_KEY_PATH):
        key_path = Path(env[ENV_KEY_PATH])
    if key_path is not None:
        key_path = Path(key_path).expanduser()
        try:
            pem = key_path.read_bytes()
        except OSError as e:
            raise ConfigurationError(f"signing key {key_path} cannot be read: {e.strerror}") from e
        return load_private_key(pem, str(key_path), passphrase)
    pem_text = env.get(ENV_KEY_PEM)
    if pem_text:
        return load_private_key(pem_text.encode(), f"${ENV_KEY_PEM}", passphrase)
    return None


def sign_file(path: Path, key: SigningKey, sig_path: Path | None = None) -> Path:
    """Write ``<path>.sig``: the raw 64-byte Ed25519 signature over the file's bytes."""
    path = Path(path)
    sig_path = Path(sig_path) if sig_path else path.with_name(path.name + ".sig")
    with file_bytes(path) as data:
        sig = key.private.sign(data)
    write_bytes_atomic(sig_path, sig, 0o644)
    # Sign-then-check: a signature that fails our own check must never ship.
    from cryptography.exceptions import InvalidSignature

    with file_bytes(path) as data:
        try:
            key.public.verify(sig, data)
        except InvalidSignature:  # pragma: no cover - the file changed while we signed it
            sig_path.unlink(missing_ok=True)
            raise IntegrityError(f"{path} changed while it was being signed") from None
    return sig_path
