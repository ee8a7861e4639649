"""An executable with a LoRA adapter (``--adapter``): its facts file, manifest entry and SBOM carry the adapter,
and the schemas accept them."""

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

LORA = dict(_MODEL, name="tiny-lora", sha256="e" * 64, size=1213216, license=None)


def test_adapter_in_facts_and_manifest(tmp_path: Path, minted_ctx) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    ctx = minted_ctx(out, "cpu", None, model=True)
    ctx.adapter = dataclasses.replace(ctx.model, name="tiny-lora", sha256="e" * 64, size=1213216,
                                      source="file:/tmp/tiny-lora.gguf", license=None)
    manifest.run(ctx)
    facts = json.loads((out / "dx-smollm2-cpu-linux-x86_64.json").read_text())
    assert facts["adapter"] == {"name": "tiny-lora", "source": "file:/tmp/tiny-lora.gguf",
                                "sha256": "e" * 64, "size": 1213216, "license": None}
    assert "draft" not in facts and "projector" not in facts
    validator("facts.schema.json").validate(facts)
    doc = json.loads((out / "manifest.json").read_text())
    validator("manifest.schema.json").validate(doc)
    assert doc["artifacts"][0]["adapter"]["name"] == "tiny-lora"


def test_adapter_sbom_component_is_what_the_library_writes() -> None:
    ts = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ref = json.loads(sbom.bom_to_json(sbom.build_bom(
        exe_name="dx-smollm2-cpu-linux-x86_64", exe_sha256="c" * 64, dx_version="0.1.0", engine=_ENGINE,
        python_dists=_DISTS, model=_MODEL, nuitka_version="4.3.3", timestamp=ts, native_libs=_NATIVE,
        adapter=LORA)))
    part = sbom.bundle_components(engine=_ENGINE, python_dists=_DISTS, nuitka_version="4.3.3", native_libs=_NATIVE)
    doc = sbom.mint_document(part, exe_name="dx-smollm2-cpu-linux-x86_64", exe_sha256="c" * 64,
                             dx_version="0.1.0", model=_MODEL, timestamp=ts, adapter=LORA)
    sbom.check_document(doc)
    text = sbom.document_text(doc)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    ref.pop("serialNumber")
    got = json.loads(text)
    got.pop("serialNumber")
    assert got == ref
    models = {c["bom-ref"]: c for c in got["components"] if c["type"] == "machine-learning-model"}
    assert set(models) == {"model", sbom.ADAPTER_REF}
    assert models[sbom.ADAPTER_REF]["hashes"] == [{"alg": "SHA-256", "content": "e" * 64}]
    assert {"name": "dx:model:role", "value": "adapter"} in models[sbom.ADAPTER_REF]["properties"]
    assert "+ LoRA adapter" in got["metadata"]["component"]["description"]
