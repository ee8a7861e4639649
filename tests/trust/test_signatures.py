"""Real keys, real files, real openssl: sign → verify passes; every tampering fails naming the file."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.scripts import console_script
from support.tools import need

from dxbuild.cli import cli
from dxbuild.release.check import verify_release
from dxbuild.release.keys import (
    PUBLIC_KEY_NAME,
    find_signing_key,
    keygen,
    load_private_key,
    sign_file,
)
from dxbuild.release.sums import SUMS_NAME, parse_sums
from dxbuild.steps.sign import sign_directory
from dxverify.errors import ConfigurationError, IntegrityError, MalformedInputError
from dxverify.signatures import verify_file


def _flip(path: Path, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return keygen(tmp_path / "keys")


@pytest.fixture
def release(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    """A small signed release directory: two 'executables' and an SBOM."""
    d = tmp_path / "rel"
    d.mkdir()
    (d / "dx-cpu-linux-x86_64").write_bytes(b"\x7fELF" + bytes(range(256)) * 300)
    (d / "dx-smollm2-cpu-linux-x86_64").write_bytes(b"\x7fELF" + b"model" * 5000)
    (d / "dx-cpu-linux-x86_64.cdx.json").write_text('{"bomFormat": "CycloneDX"}\n')
    sign_directory(d, find_signing_key(keys[0], env={}))
    return d


def test_keygen_modes_and_refuses_overwrite(tmp_path: Path) -> None:
    priv, pub = keygen(tmp_path)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    with pytest.raises(ConfigurationError, match="already exists"):
        keygen(tmp_path)
    keygen(tmp_path, force=True)


def test_passphrase_protected_key(tmp_path: Path) -> None:
    priv, _ = keygen(tmp_path, passphrase=b"s3cret")
    assert b"ENCRYPTED" in priv.read_bytes()
    with pytest.raises(ConfigurationError, match="passphrase-protected"):
        find_signing_key(priv, env={})
    with pytest.raises(ConfigurationError, match="check the passphrase"):
        find_signing_key(priv, env={"DX_SIGNING_KEY_PASSPHRASE": "wrong"})
    key = find_signing_key(priv, env={"DX_SIGNING_KEY_PASSPHRASE": "s3cret"})
    assert key is not None and key.origin == str(priv)


def test_key_from_environment(tmp_path: Path) -> None:
    priv, _ = keygen(tmp_path)
    assert find_signing_key(None, env={}) is None
    assert find_signing_key(None, env={"DX_SIGNING_KEY": str(priv)}).origin == str(priv)
    from_pem = find_signing_key(None, env={"DX_SIGNING_KEY_PEM": priv.read_text()})
    assert from_pem.origin == "$DX_SIGNING_KEY_PEM"
    with pytest.raises(ConfigurationError, match=r"\$DX_SIGNING_KEY_PEM cannot be loaded"):
        load_private_key(b"not a key", "$DX_SIGNING_KEY_PEM")


def test_sign_then_verify(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    f = tmp_path / "artifact"
    f.write_bytes(b"hello world\n" * 1000)
    sig = sign_file(f, find_signing_key(keys[0], env={}))
    assert sig.name == "artifact.sig" and len(sig.read_bytes()) == 64
    verify_file(f, sig, keys[1])


@pytest.mark.parametrize("what", ["artifact", "signature"])
def test_flipped_byte_fails_naming_file(tmp_path: Path, keys: tuple[Path, Path], what: str) -> None:
    f = tmp_path / "artifact"
    f.write_bytes(b"payload" * 100)
    sig = sign_file(f, find_signing_key(keys[0], env={}))
    _flip(f if what == "artifact" else sig, 5)
    with pytest.raises(IntegrityError, match=r"artifact: signature artifact\.sig does not match"):
        verify_file(f, sig, keys[1])


def test_wrong_key_and_bad_inputs(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    f = tmp_path / "artifact"
    f.write_bytes(b"x" * 10)
    sig = sign_file(f, find_signing_key(keys[0], env={}))
    _, other_pub = keygen(tmp_path / "other")
    with pytest.raises(IntegrityError, match="does not match"):
        verify_file(f, sig, other_pub)
    sig.write_bytes(sig.read_bytes()[:63])
    with pytest.raises(IntegrityError, match="is 63 bytes"):
        verify_file(f, sig, keys[1])
    (tmp_path / "bad.pub").write_text("nope")
    with pytest.raises(MalformedInputError, match=r"bad\.pub is not a PEM public key"):
        verify_file(f, sig, tmp_path / "bad.pub")


def test_openssl_verifies_our_signatures(release: Path, keys: tuple[Path, Path]) -> None:
    """What install.sh does without Python: openssl pkeyutl -verify -rawin."""
    openssl = need("openssl")
    for name in ("dx-cpu-linux-x86_64", SUMS_NAME):
        cmd = [openssl, "pkeyutl", "-verify", "-pubin", "-inkey", str(release / PUBLIC_KEY_NAME),
               "-rawin", "-in", str(release / name), "-sigfile", str(release / (name + ".sig"))]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0 and "Signature Verified Successfully" in r.stdout, r.stderr
    _flip(release / "dx-cpu-linux-x86_64", 100)
    tampered = [*cmd[:-4], "-in", str(release / "dx-cpu-linux-x86_64"),
                "-sigfile", str(release / "dx-cpu-linux-x86_64.sig")]
    r = subprocess.run(tampered, capture_output=True, text=True)
    assert r.returncode != 0


def test_sha256sum_reads_our_sums(release: Path) -> None:
    sums = parse_sums(release / SUMS_NAME)
    assert set(sums) == {"dx-cpu-linux-x86_64", "dx-smollm2-cpu-linux-x86_64", "dx-cpu-linux-x86_64.cdx.json"}
    sha256sum = shutil.which("sha256sum")
    if sha256sum:
        r = subprocess.run([sha256sum, "-c", SUMS_NAME], cwd=release, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_verify_release_passes(release: Path, keys: tuple[Path, Path]) -> None:
    report = verify_release(release, public_key=keys[1])
    assert "signature SHA256SUMS.sig" in report.ok
    assert "sha256 dx-smollm2-cpu-linux-x86_64" in report.ok
    assert not report.failed


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        (lambda d: _flip(d / "dx-smollm2-cpu-linux-x86_64", 1000), "dx-smollm2-cpu-linux-x86_64"),
        (lambda d: _flip(d / "dx-cpu-linux-x86_64.cdx.json", 3), "dx-cpu-linux-x86_64.cdx.json"),
        (lambda d: _flip(d / SUMS_NAME, 0), SUMS_NAME),
        (lambda d: _flip(d / "dx-cpu-linux-x86_64.sig", 10), "dx-cpu-linux-x86_64"),
        (lambda d: _flip(d / (SUMS_NAME + ".sig"), 63), SUMS_NAME),
        (lambda d: (d / "dx-cpu-linux-x86_64.sig").unlink(), "dx-cpu-linux-x86_64 has no signature"),
        (lambda d: (d / (SUMS_NAME + ".sig")).unlink(), "SHA256SUMS is not signed"),
        (lambda d: (d / "dx-cpu-linux-x86_64").unlink(), "dx-cpu-linux-x86_64 is listed in SHA256SUMS but missing"),
    ],
    ids=["artifact", "sbom", "sums-line", "artifact-sig", "sums-sig", "missing-sig", "unsigned-sums",
         "missing-artifact"],
)
def test_verify_release_tampering(release: Path, keys: tuple[Path, Path], tamper, named: str) -> None:
    tamper(release)
    with pytest.raises(IntegrityError) as e:
        verify_release(release, public_key=keys[1])
    assert named in str(e.value)


def test_verify_release_wrong_key(release: Path, tmp_path: Path) -> None:
    _, other_pub = keygen(tmp_path / "other")
    with pytest.raises(IntegrityError, match=r"SHA256SUMS: signature SHA256SUMS\.sig does not match"):
        verify_release(release, public_key=other_pub)


def test_unsigned_directory(tmp_path: Path) -> None:
    d = tmp_path / "rel"
    d.mkdir()
    (d / "dx-cpu-linux-x86_64").write_bytes(b"abc")
    sign_directory(d, None)
    assert not list(d.glob("*.sig"))
    with pytest.raises(IntegrityError, match=r"public key .* is missing"):
        verify_release(d)
    assert verify_release(d, require_signatures=False).ok == ["sha256 dx-cpu-linux-x86_64"]


def test_cli_keygen_sign_verify(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(cli, ["keygen", "--out", str(tmp_path / "k")])
    assert r.exit_code == 0, r.output
    d = tmp_path / "rel"
    d.mkdir()
    (d / "dx-cpu-linux-x86_64").write_bytes(b"binary")
    r = runner.invoke(cli, ["sign", str(d), "--key", str(tmp_path / "k" / "dx-release.key"), "--no-sigstore"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["verify-release", str(d), "--key", str(tmp_path / "k" / "dx-release.pub")])
    assert r.exit_code == 0, r.output
    assert "all 3 checks passed" in r.output


def test_cli_one_line_error(tmp_path: Path) -> None:
    """A tampered release through the real console script: one line, exit code 4, no traceback."""
    dxbuild = console_script("dxbuild")
    keygen(tmp_path / "k")
    d = tmp_path / "rel"
    d.mkdir()
    (d / "dx-cpu-linux-x86_64").write_bytes(b"binary")
    sign_directory(d, find_signing_key(tmp_path / "k" / "dx-release.key", env={}))
    _flip(d / "dx-cpu-linux-x86_64")
    r = subprocess.run([dxbuild, "verify-release", str(d)], capture_output=True, text=True)
    assert r.returncode == 4
    assert r.stderr.startswith("dxbuild: error: release") and "dx-cpu-linux-x86_64" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_checksums_step_keeps_earlier_cells(tmp_path: Path, minted_ctx) -> None:
    """Two cells minted into one directory: one SHA256SUMS lists both, re-hashed."""
    from dxbuild.steps import checksums

    out = tmp_path / "out"
    checksums.run(minted_ctx(out, "cpu", None, model=False))
    first = out / "dx-cpu-linux-x86_64"
    first.write_bytes(b"changed after")  # the kept entry must be hashed again, not copied
    checksums.run(minted_ctx(out, "cuda13", 580, model=False))
    sums = parse_sums(out / SUMS_NAME)
    assert set(sums) == {"dx-cpu-linux-x86_64", "dx-cuda13-linux-x86_64"}
    import hashlib

    assert sums["dx-cpu-linux-x86_64"] == hashlib.sha256(b"changed after").hexdigest()


def test_sigstore_identity_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    """No identity anywhere → None (without asking sigstore); SIGSTORE_ID_TOKEN is taken as is; a CI
    identity that is configured but cannot be fetched is a one-line ToolError, not a silent skip."""
    from dxbuild.release import sigstore as sigstore_sign
    from dxverify.errors import ToolError

    for var in ("SIGSTORE_ID_TOKEN", "GITHUB_ACTIONS", *sigstore_sign._AMBIENT_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sigstore_sign, "_ambient_identity_possible", lambda: False)
    assert sigstore_sign.detect_identity_token() is None
    monkeypatch.setenv("SIGSTORE_ID_TOKEN", "tok")
    assert sigstore_sign.detect_identity_token() == "tok"
    monkeypatch.delenv("SIGSTORE_ID_TOKEN")
    monkeypatch.undo()
    for var in ("SIGSTORE_ID_TOKEN", *sigstore_sign._AMBIENT_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", "http://127.0.0.1:9/token")  # nothing listens
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "x")
    with pytest.raises(ToolError, match="OIDC identity seems configured"):
        sigstore_sign.detect_identity_token()
