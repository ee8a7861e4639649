"""sigstore keyless signatures (``<file>.sigstore.json``) in CI.

Keyless signing binds each executable to the CI workflow's OIDC identity via
Fulcio and records it in Rekor, so users can check *which workflow* built a
file without DX guarding a key. It needs the network and an OIDC token, so it
runs only where one is available (GitHub Actions with ``id-token: write``, or
``SIGSTORE_ID_TOKEN``); everywhere else it is skipped and says so. Verifying the
bundles later needs neither (dxverify.signatures.verify_sigstore_bundle).
"""

from __future__ import annotations

import os
from pathlib import Path

from dxverify.errors import ToolError
from dxverify.hashing import sha256_file

BUNDLE_SUFFIX = ".sigstore.json"


# What sigstore's ambient detection (the ``id`` package) looks for: CI providers'
# environment variables, or a Google Cloud machine.
_AMBIENT_ENV = ("ACTIONS_ID_TOKEN_REQUEST_URL", "GITLAB_CI", "CIRCLECI", "BUILDKITE", "GOOGLE_SERVICE_ACCOUNT_NAME")


def _ambient_identity_possible() -> bool:
    if any(os.environ.get(v) for v in _AMBIENT_ENV):
        return True
    try:
        return "Google" in Path("/sys/class/dmi/id/product_name").read_text()
    except OSError:
        return False


def detect_identity_token() -> str | None:
    """An OIDC token for sigstore, or None: ``SIGSTORE_ID_TOKEN``, else sigstore's ambient detection.

    sigstore is imported (0.6 s) only where an ambient identity can exist.
    """
    token = os.environ.get("SIGSTORE_ID_TOKEN")
    if token:
        return token
    if not _ambient_identity_possible():
        return None
    from sigstore.oidc import IdentityError, detect_credential

    try:
        return detect_credential()
    except IdentityError as e:
        raise ToolError(f"an OIDC identity seems configured but could not be fetched: {e}") from e


def sign_files(files: list[Path], token: str) -> list[Path]:
    """Sign each file with one short-lived Fulcio certificate; write ``<file>.sigstore.json``."""
    from sigstore.errors import Error as SigstoreError
    from sigstore.hashes import HashAlgorithm, Hashed
    from sigstore.models import ClientTrustConfig
    from sigstore.oidc import IdentityToken
    from sigstore.sign import SigningContext

    written = []
    try:
        signing = SigningContext.from_trust_config(ClientTrustConfig.production())
        with signing.signer(IdentityToken(token)) as signer:
            for f in files:
                digest = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(sha256_file(f)))
                bundle = signer.sign_artifact(digest)
                dest = f.with_name(f.name + BUNDLE_SUFFIX)
                tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
                tmp.write_text(bundle.to_json(), encoding="utf-8")
                os.replace(tmp, dest)
                written.append(dest)
    except SigstoreError as e:
        raise ToolError(f"sigstore signing failed: {e}", hint="check network access to Fulcio/Rekor") from e
    return written
