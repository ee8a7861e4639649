"""Release manifest: facts → manifest.json/.txt, schema-valid, round-trips, catches altered files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.schemas import validator

from dxbuild.cli import cli
from dxbuild.paths import project_root
from dxbuild.steps import manifest
from dxverify.errors import ConfigurationError, IntegrityError, MalformedInputError

SCHEMAS = project_root() / "ci" / "schemas"


@pytest.fixture
def release(tmp_path: Path, minted_ctx) -> Path:
    out = tmp_path / "out"
    manifest.run(minted_ctx(out, "cpu", None, model=True))
    manifest.run(minted_ctx(out, "cuda13", 580, model=False))
    return out


def test_step_writes_schema_valid_manifest(release: Path) -> None:
    doc = json.loads((release / "manifest.json").read_text())
    validator("manifest.schema.json").validate(doc)
    for f in ("dx-smollm2-cpu-linux-x86_64.json", "dx-cuda13-linux-x86_64.json"):
        validator("facts.schema.json").validate(json.loads((release / f).read_text()))
    by_tier = {a["tier"]: a for a in doc["artifacts"]}
    assert set(by_tier) == {"cpu", "cuda13"}
    cpu = by_tier["cpu"]
    assert cpu["engine_commit"] == "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
    assert cpu["requirements"]["cpu"] == {"minimum": "x86-64 (baseline)",
                                          "variants": ["x64", "sse42", "haswell", "skylakex"]}
    assert cpu["model"]["license"] == "Apache-2.0"
    assert by_tier["cuda13"]["requirements"]["min_nvidia_driver"] == 580


def test_text_twin_round_trips(release: Path) -> None:
    doc = json.loads((release / "manifest.json").read_text())
    text = (release / "manifest.txt").read_text()
    assert text.splitlines()[0] == f"dx-manifest 1 {doc['dx_version']}"
    assert "artifact cuda13 linux x86_64 580 dx-cuda13-linux-x86_64 " in text
    assert "artifact cpu linux x86_64 - dx-smollm2-cpu-linux-x86_64 " in text
    back = manifest.parse_manifest_text(text)
    assert back["dx_version"] == doc["dx_version"]
    assert [(a["file"], a["size"], a["sha256"], a["min_nvidia_driver"]) for a in back["artifacts"]] == [
        (a["file"], a["size"], a["sha256"], a["requirements"]["min_nvidia_driver"]) for a in doc["artifacts"]]
    assert manifest.manifest_text(doc) == text


def test_dxbuild_manifest_rebuilds_same_bytes(release: Path) -> None:
    before = {n: (release / n).read_bytes() for n in ("manifest.json", "manifest.txt")}
    for n in before:
        (release / n).unlink()
    r = CliRunner().invoke(cli, ["manifest", str(release)])
    assert r.exit_code == 0, r.output
    assert {n: (release / n).read_bytes() for n in before} == before


def test_manifest_sees_signatures_and_sbom(release: Path) -> None:
    (release / "dx-cuda13-linux-x86_64.sig").write_bytes(b"\0" * 64)
    (release / "dx-cuda13-linux-x86_64.cdx.json").write_text("{}")
    manifest.manifest_for_directory(release)
    doc = json.loads((release / "manifest.json").read_text())
    cuda = next(a for a in doc["artifacts"] if a["tier"] == "cuda13")
    assert cuda["signatures"] == ["dx-cuda13-linux-x86_64.sig"]
    assert cuda["sbom"] == "dx-cuda13-linux-x86_64.cdx.json"


def test_altered_artifact_is_named(release: Path) -> None:
    exe = release / "dx-cuda13-linux-x86_64"
    exe.write_bytes(exe.read_bytes()[:-1] + b"!")
    with pytest.raises(IntegrityError, match="dx-cuda13-linux-x86_64 does not match its facts file"):
        manifest.manifest_for_directory(release)


@pytest.mark.parametrize(("edit", "msg"), [
    (lambda d: d.update(tier="CPU tier"), "bad 'tier'"),
    (lambda d: d.update(sha256="xyz"), "bad 'sha256'"),
    (lambda d: d.update(file="../etc/passwd"), "bad 'file'"),
    (lambda d: d["requirements"].update(min_nvidia_driver="580"), "bad 'min_nvidia_driver'"),
    (lambda d: d.update(dx_facts=2), "dx_facts must be 1"),
])
def test_bad_facts_file_is_named(release: Path, edit, msg: str) -> None:
    p = release / "dx-cuda13-linux-x86_64.json"
    doc = json.loads(p.read_text())
    edit(doc)
    p.write_text(json.dumps(doc))
    with pytest.raises(MalformedInputError, match=msg) as e:
        manifest.manifest_for_directory(release)
    assert "dx-cuda13-linux-x86_64.json" in str(e.value)


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"no <artifact>\.json facts files"):
        manifest.manifest_for_directory(tmp_path)
