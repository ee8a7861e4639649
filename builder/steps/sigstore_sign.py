"""Step: sigstore keyless signatures (``<file>.sigstore.json``) in CI (``dxbuild.release.sigstore``)."""

from __future__ import annotations

from dxbuild.context import ArtifactType, BuildContext, Skip
from dxbuild.release.sigstore import detect_identity_token, sign_files

name = "sigstore"


def run(ctx: BuildContext) -> None:
    token = detect_identity_token()
    if not token:
        raise Skip("no OIDC identity here (runs in CI with id-token: write, or set SIGSTORE_ID_TOKEN)")
    exes = [a.path for a in ctx.of(ArtifactType.EXECUTABLE)]
    if not exes:
        raise Skip("no executables were minted")
    for b in sign_files(exes, token):
        ctx.add(ArtifactType.SIGSTORE_BUNDLE, b)
