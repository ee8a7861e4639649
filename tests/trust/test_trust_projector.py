"""An executable with a vision projector (``--mmproj``): its facts file, manifest entry and SBOM carry the
projector, and the schemas accept them."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from support.schemas import validator
from test_sbom import _DISTS, _ENGINE, _MODEL, _NATIVE

from dxbuild.steps import manifest, sbom

PROJ = dict(_MODEL, name="mmproj-tiny", sha256="f" * 64, size=305280, license=None)


def test_projector_in_facts_and_manifest(tmp_path: Path, minted_ctx) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    ctx = minted_ctx(out, "cpu", None, model=True)
    ctx.projector = dataclasses.replace(ctx.model, name="mmproj-tiny", sha256="f" * 64, size=305280,
                                        source="file:/tmp/mmproj-tiny.gguf", license=None)
    manifest.run(ctx)
    facts = json.loads((out / "dx-smollm2-cpu-linux-x86_64.json").read_text())
    assert facts["projector"] == {"name": "mmproj-tiny", "source": "file:/tmp/mmproj-tiny.gguf",
                                  "sha256": "f" * 64, "size": 305280, "license": None}
    assert "draft" not in facts
    validator("facts.schema.json").validate(facts)
    doc = json.loads((out / "manifest.json").read_text())
    validator("manifest.schema.json").validate(doc)
    assert doc["artifacts"][0]["projector"]["name"] == "mmproj-tiny"


def test_projector_sbom_component_is_what_the_library_writes() -> None:
    ts = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ref = json.loads(sbom.bom_to_json(sbom.build_bom(
        exe_name="dx-smollm2-cpu-linux-x86_64", exe_sha256="c" * 64, dx_version="0.1.0", engine=_ENGINE,
        python_dists=_DISTS, model=_MODEL, nuitka_version="4.3.3", timestamp=ts, native_libs=_NATIVE,
        projector=PROJ)))
    part = sbom.bundle_components(engine=_ENGINE, python_dists=_DISTS, nuitka_version="4.3.3", native_libs=_NATIVE)
    doc = sbom.mint_document(part, exe_name="dx-smollm2-cpu-linux-x86_64", exe_sha256="c" * 64,
                             dx_version="0.1.0", model=_MODEL, timestamp=ts, projector=PROJ)
    sbom.check_document(doc)
    text = sbom.document_text(doc)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    ref.pop("serialNumber")
    got = json.loads(text)
    got.pop("serialNumber")
    assert got == ref
    models = {c["bom-ref"]: c for c in got["components"] if c["type"] == "machine-learning-model"}
    assert set(models) == {"model", sbom.PROJECTOR_REF}
    assert models[sbom.PROJECTOR_REF]["hashes"] == [{"alg": "SHA-256", "content": "f" * 64}]
    assert {"name": "dx:model:role", "value": "projector"} in models[sbom.PROJECTOR_REF]["properties"]
    assert "+ vision projector" in got["metadata"]["component"]["description"]
