"""`dx verify FILE --signature FILE.sig --key PUB`: the real console script on the real SmolLM2 model."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dxbuild.keys import find_signing_key, keygen, sign_file

DX = shutil.which("dx")
pytestmark = pytest.mark.skipif(DX is None, reason="dx console script not installed")


@pytest.fixture
def signed_model(tmp_path: Path, smollm2_gguf: Path) -> tuple[Path, Path, Path]:
    model = tmp_path / "smollm2.gguf"
    model.symlink_to(smollm2_gguf)
    priv, pub = keygen(tmp_path / "keys")
    sig = sign_file(model, find_signing_key(priv, env={}))
    return model, sig, pub


def _dx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DX, "verify", *args], capture_output=True, text=True, timeout=300)


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
