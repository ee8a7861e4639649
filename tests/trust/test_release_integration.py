"""The real mint's release directory: trust outputs present and valid; sign → verify-release; tamper fails."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from dxbuild.release.keys import keygen

pytestmark = pytest.mark.integration


@pytest.fixture
def release_copy(mint_release_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "release"
    shutil.copytree(mint_release_dir, d)
    return d


def test_mint_wrote_trust_outputs(mint_release_dir: Path, minted_smollm2: Path) -> None:
    d = mint_release_dir
    name = minted_smollm2.name
    sbom = (d / f"{name}.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom) is None
    comps = {c["bom-ref"]: c for c in json.loads(sbom)["components"]}
    assert comps["llama.cpp"]["version"] == "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
    assert comps["model"]["hashes"][0]["content"] == \
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert comps["native:libcrypto"]["version"]  # OpenSSL shipped inside the runtime is listed
    assert "pypi:click" in comps
    facts = json.loads((d / f"{name}.json").read_text())
    assert facts["sha256"] in (d / "SHA256SUMS").read_text()
    assert facts["requirements"]["cpu"]["variants"], facts["requirements"]
    text = (d / "manifest.txt").read_text().splitlines()
    assert text[1].startswith(f"artifact cpu linux {facts['arch']} - {name} {minted_smollm2.stat().st_size} ")
    size = json.loads((d / "size-report.json").read_text())["artifacts"][0]
    assert sum(size["components"].values()) == minted_smollm2.stat().st_size
    assert all(size["components"][c] > 0 for c in ("engine", "backend", "python", "nuitka", "model"))


def test_sign_and_verify_release(release_copy: Path, tmp_path: Path, minted_smollm2: Path) -> None:
    priv, pub = keygen(tmp_path / "keys")
    subprocess.run(["dxbuild", "sign", str(release_copy), "--key", str(priv), "--no-sigstore"], check=True,
                   capture_output=True)
    r = subprocess.run(["dxbuild", "verify-release", str(release_copy), "--key", str(pub)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ok  manifest dx-smollm2-cpu-linux-" in r.stdout
    # openssl, as install.sh does it
    r = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin",
                        "-in", str(release_copy / "SHA256SUMS"), "-sigfile", str(release_copy / "SHA256SUMS.sig")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    exe = release_copy / minted_smollm2.name
    with open(exe, "r+b") as f:  # one flipped byte inside the embedded model
        f.seek(exe.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    r = subprocess.run(["dxbuild", "verify-release", str(release_copy), "--key", str(pub)],
                       capture_output=True, text=True)
    assert r.returncode == 4
    assert exe.name in r.stderr and "Traceback" not in r.stderr
