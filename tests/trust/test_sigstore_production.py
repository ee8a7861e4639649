"""sigstore verification on a real production bundle, offline, against DX's pinned trusted root.

The bundle (see conftest.production_sigstore_bundle) was made by production Fulcio and Rekor for a
GitHub Actions release workflow: the same kind of identity DX's own releases are signed with.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from support.scripts import console_script

from dxbuild.release.check import PINNED_TRUSTED_ROOT
from dxbuild.release.sigstore import BUNDLE_SUFFIX
from dxbuild.steps.sign import sign_directory
from dxverify.errors import IntegrityError
from dxverify.signatures import verify_sigstore_bundle

STATEMENT = "in-toto statement over pypi_attestation_models-0.0.4a2.tar.gz (https://docs.pypi.org/attestations/publish/v1)"


@pytest.fixture
def signed(tmp_path: Path, production_sigstore_bundle):
    """Copies of the artifact and bundle (the tests alter them; the cache stays as downloaded)."""
    pb = production_sigstore_bundle
    d = tmp_path / "rel"
    d.mkdir()
    artifact = Path(shutil.copy(pb.artifact, d / pb.artifact.name))
    bundle = Path(shutil.copy(pb.bundle, d / (artifact.name + BUNDLE_SUFFIX)))
    return dataclasses.replace(pb, artifact=artifact, bundle=bundle)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt from this process fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"verification tried the network: {args[1:]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def _verify(b, **overrides: object) -> str:
    kw: dict = {"identity": b.identity, "issuer": b.issuer, "trusted_root": PINNED_TRUSTED_ROOT, **overrides}
    return verify_sigstore_bundle(b.artifact, b.bundle, **kw)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_verifies_offline_against_the_pinned_root(signed, offline: None) -> None:
    assert _verify(signed) == STATEMENT


def _refused(b, match: str, **overrides: object) -> str:
    with pytest.raises(IntegrityError, match=match) as e:
        _verify(b, **overrides)
    msg = str(e.value)
    assert msg.startswith(f"{b.artifact}: sigstore bundle {b.bundle.name} ") and "\n" not in msg
    return msg


def test_flipped_byte_in_artifact_is_refused(signed, offline: None) -> None:
    _flip(signed.artifact, signed.artifact.stat().st_size // 2)
    msg = _refused(signed, "does not cover this file: the file's SHA-256 is ")
    assert "c9709ce6fd5b67b59b4a28758cf14d3f411803c4b89b6068b1f1a8e4ee94c8ef" in msg  # what was signed


def test_wrong_identity_is_refused(signed, offline: None) -> None:
    other = signed.identity.replace("@refs/tags/v0.0.4a2", "@refs/heads/main")
    _refused(signed, r"does not verify: Certificate's SANs do not match", identity=other)


def test_wrong_issuer_is_refused(signed, offline: None) -> None:
    _refused(signed, r"does not verify: Certificate's OIDCIssuer does not match", issuer="https://accounts.google.com")


def test_altered_envelope_is_refused(signed, offline: None) -> None:
    """The statement is edited to name the flipped file's digest: the envelope signature no longer holds."""
    import base64
    import json

    doc = json.loads(signed.bundle.read_text())
    stmt = base64.b64decode(doc["dsseEnvelope"]["payload"]).replace(b'"sha256":"c', b'"sha256":"d')
    doc["dsseEnvelope"]["payload"] = base64.b64encode(stmt).decode()
    signed.bundle.write_text(json.dumps(doc))
    _refused(signed, "does not verify: ")


def test_root_without_production_keys_is_refused(signed, offline: None) -> None:
    """sigstore's staging root (its package ships one): production's certificate does not chain to it."""
    import sigstore

    staging = Path(sigstore.__file__).parent / "_store" / "https%3A%2F%2Ftuf-repo-cdn.sigstage.dev" / "trusted_root.json"
    if not staging.is_file():
        pytest.skip(f"this sigstore ships no staging root at {staging}")
    msg = _refused(signed, "does not verify: .*certificate chain", trusted_root=staging)
    assert str(staging) in msg


def test_dxbuild_verify_release_command_line(signed) -> None:
    """The real console script: passes, then refuses each tampering in one line with exit code 4."""
    dxbuild = console_script("dxbuild")
    d = signed.artifact.parent

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        sign_directory(d, None)  # SHA256SUMS of the files as they are now: only sigstore can object
        return subprocess.run([dxbuild, "verify-release", str(d), "--allow-unsigned", *extra],
                              capture_output=True, text=True, timeout=120)

    r = run("--identity", signed.identity)
    assert r.returncode == 0, r.stderr
    assert f"ok  sigstore {signed.bundle.name}: {STATEMENT}" in r.stdout
    for extra, reason in [
        (("--identity", signed.identity + "x"), "Certificate's SANs do not match"),
        (("--identity", signed.identity, "--issuer", "https://accounts.google.com"), "OIDCIssuer does not match"),
    ]:
        r = run(*extra)
        assert r.returncode == 4 and reason in r.stderr, r.stderr
        assert r.stderr.startswith(f"dxbuild: error: release {d} failed 1 check(s): {signed.artifact}")
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    _flip(signed.artifact, 100)
    r = run("--identity", signed.identity)
    assert r.returncode == 4 and "does not cover this file" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
