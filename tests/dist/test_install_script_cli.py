"""`dxbuild install-script`: what it bakes in, and one clear line for every bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def dxbuild(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("DX_RELEASE_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "dxbuild", *args], capture_output=True, text=True, cwd=cwd,
                          env=e, timeout=60)


def test_writes_an_executable_script_with_url_and_key(tmp_path, release_keys):
    out = tmp_path / "install.sh"
    r = dxbuild("install-script", "--base-url", "https://example.org/dx/releases/download/v1.2.3/",
                "--public-key", str(release_keys / "dx-release.pub"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert out.stat().st_mode & 0o777 == 0o755
    assert "dxi_release_url='https://example.org/dx/releases/download/v1.2.3'\n" in text
    pem = (release_keys / "dx-release.pub").read_text().strip()
    assert f"dxi_public_key='{pem}'\n" in text
    assert text.rstrip().splitlines()[-1] == 'dx_install "$@" --dx-end-of-script'
    assert [p.name for p in tmp_path.iterdir()] == ["install.sh"]


def test_stdout_and_environment(release_keys):
    r = dxbuild("install-script", env={"DX_RELEASE_BASE_URL": "https://example.org/r",
                                       "DX_RELEASE_PUBLIC_KEY": str(release_keys / "dx-release.pub")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("#!/bin/sh\n") and "dxi_release_url='https://example.org/r'" in r.stdout


def test_without_a_key_it_warns(tmp_path):
    r = dxbuild("install-script", "--base-url", "https://example.org/r", "-o", str(tmp_path / "i.sh"))
    assert r.returncode == 0
    assert "no --public-key: the script will install without checking signatures" in r.stderr
    assert "dxi_public_key=''" in (tmp_path / "i.sh").read_text()


def _rsa_pub(path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.mark.parametrize(("args", "message"), [
    ((), "no release URL — pass --base-url URL"),
    (("--base-url", "ftp://example.org/r"), "--base-url 'ftp://example.org/r' must use https://"),
    (("--base-url", "http://example.org/r"), "must use https:// — plain http is accepted only for 127.0.0.1"),
    (("--base-url", "https://example.org/r?x=1"), "has a query, fragment, quote or space"),
    (("--base-url", "https://example.org/it's"), "has a query, fragment, quote or space"),
    (("--base-url", "not a url"), "is not a URL"),
    (("--base-url", "https://e.org", "--public-key", "{keys}/dx-release.key"), "not a PEM public key"),
    (("--base-url", "https://e.org", "--public-key", "{rsa}"), "a RSAPublicKey, not an Ed25519 key"),
    (("--base-url", "https://e.org", "--public-key", "{tmp}/missing.pub"), "cannot read it"),
])
def test_bad_input_is_one_line_and_writes_nothing(args, message, tmp_path, release_keys):
    rsa_path = _rsa_pub(tmp_path / "rsa.pub")
    args = [a.format(keys=release_keys, rsa=rsa_path, tmp=tmp_path) for a in args]
    out = tmp_path / "out" / "install.sh"
    r = dxbuild("install-script", *args, "-o", str(out))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dxbuild: error: ") and message in lines[0], r.stderr
    assert not out.parent.exists()
