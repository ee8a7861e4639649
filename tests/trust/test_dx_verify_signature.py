"""`dx verify FILE --signature FILE.sig --key PUB`: the real console script on the real SmolLM2 model."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support.scripts import console_script
from support.tools import need

from dxbuild.release.keys import find_signing_key, keygen, sign_file


@pytest.fixture
def signed_model(tmp_path: Path, smollm2_gguf: Path) -> tuple[Path, Path, Path]:
    model = tmp_path / "smollm2.gguf"
    model.symlink_to(smollm2_gguf)
    priv, pub = keygen(tmp_path / "keys")
    sig = sign_file(model, find_signing_key(priv, env={}))
    return model, sig, pub


def _dx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([console_script("dx"), "verify", *args], capture_output=True, text=True, timeout=300)


def test_signature_verified(signed_model: tuple[Path, Path, Path]) -> None:
    model, sig, pub = signed_model
    r = _dx(str(model), "--no-hash", "--signature", str(sig), "--key", str(pub))
    assert r.returncode == 0, r.stderr
    assert f"signature: smollm2.gguf.sig verified with {pub} (Ed25519)" in r.stdout
    r = _dx(str(model), "--no-hash", "--key", str(pub))  # PATH.sig by default
    assert r.returncode == 0, r.stderr


def test_tampered_signature_fails_naming_file(signed_model: tuple[Path, Path, Path]) -> None:
    model, sig, pub = signed_model
    data = bytearray(sig.read_bytes())
    data[0] ^= 1
    sig.write_bytes(bytes(data))
    r = _dx(str(model), "--no-hash", "--signature", str(sig), "--key", str(pub))
    assert r.returncode == 4
    assert r.stderr.startswith(f"dx: error: {model}: signature smollm2.gguf.sig does not match")
    assert "Traceback" not in r.stderr


def test_wrong_key_and_missing_key(signed_model: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, sig, _ = signed_model
    _, other = keygen(tmp_path / "other")
    r = _dx(str(model), "--no-hash", "--signature", str(sig), "--key", str(other))
    assert r.returncode == 4 and "does not match this file and key" in r.stderr
    r = _dx(str(model), "--no-hash", "--signature", str(sig))
    assert r.returncode == 4 and "--signature needs --key" in r.stderr


def test_without_cryptography_openssl_checks(signed_model: tuple[Path, Path, Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled runtime leaves `cryptography` out: the same check runs through openssl."""
    import sys

    from click.testing import CliRunner

    from dx.cli import cli

    need("openssl")
    model, sig, pub = signed_model
    monkeypatch.setitem(sys.modules, "dxverify.signatures", None)  # import now raises ImportError
    r = CliRunner().invoke(cli, ["verify", str(model), "--no-hash", "--key", str(pub)])
    assert r.exit_code == 0, r.output
    assert "(Ed25519, by openssl)" in r.output
    data = bytearray(sig.read_bytes())
    data[5] ^= 1
    sig.write_bytes(bytes(data))
    r = CliRunner().invoke(cli, ["verify", str(model), "--no-hash", "--key", str(pub)])
    from dxverify.errors import IntegrityError

    assert isinstance(r.exception, IntegrityError)  # the CLI wrapper turns it into exit code 4
    assert "does not match this file and key (openssl)" in str(r.exception)
