"""A two-model executable's SBOM lists the draft as a second model component, exactly as cyclonedx-python-lib
writes it (whatever the two names sort to), and the schema accepts it."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from test_sbom import _DISTS, _ENGINE, _MODEL, _NATIVE

from dxbuild.steps import sbom


@pytest.mark.parametrize("draft", [
    dict(_MODEL, sha256="d" * 64, size=99),  # the same name: bom-ref decides
    dict(_MODEL, name="aaa-draft", sha256="0" * 64, license="Apache-2.0"),  # sorts before the model
    dict(_MODEL, name="zzz-draft", sha256="e" * 64, license="llama3.2 community license"),
], ids=["same-name", "sorts-first", "sorts-last"])
def test_draft_component_is_what_the_library_writes(draft: dict) -> None:
    ts = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ref = json.loads(sbom.bom_to_json(sbom.build_bom(
        exe_name="dx-smollm2-cpu-linux-x86_64", exe_sha256="c" * 64, dx_version="0.1.0", engine=_ENGINE,
        python_dists=_DISTS, model=_MODEL, nuitka_version="4.3.3", timestamp=ts, native_libs=_NATIVE,
        draft=draft)))
    part = sbom.bundle_components(engine=_ENGINE, python_dists=_DISTS, nuitka_version="4.3.3", native_libs=_NATIVE)
    doc = sbom.mint_document(part, exe_name="dx-smollm2-cpu-linux-x86_64", exe_sha256="c" * 64,
                             dx_version="0.1.0", model=_MODEL, timestamp=ts, draft=draft)
    sbom.check_document(doc)
    text = sbom.document_text(doc)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    ref.pop("serialNumber")
    got = json.loads(text)
    got.pop("serialNumber")
    assert got == ref
    models = {c["bom-ref"]: c for c in got["components"] if c["type"] == "machine-learning-model"}
    assert set(models) == {"model", sbom.DRAFT_REF}
    assert models[sbom.DRAFT_REF]["hashes"] == [{"alg": "SHA-256", "content": draft["sha256"]}]
    assert {"name": "dx:model:role", "value": "draft"} in models[sbom.DRAFT_REF]["properties"]
    assert "+ draft model" in got["metadata"]["component"]["description"]


def test_a_bad_draft_hash_is_caught() -> None:
    ts = datetime(2026, 1, 1, tzinfo=timezone.utc)
    doc = sbom.mint_document([], exe_name="x", exe_sha256="c" * 64, dx_version="0.1.0", model=_MODEL,
                             timestamp=ts, draft=dict(_MODEL, sha256="nothex"))
    with pytest.raises(Exception, match="draft-model: SHA-256"):
        sbom.check_document(doc)
