"""A two-model executable's SBOM lists the draft as a second model component, exactly as cyclonedx-python-lib
writes it (whatever the two names sort to), and the schema accepts it."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from test_sbom import _MODEL, mint_document_as_library

from dxbuild.steps import sbom


@pytest.mark.parametrize("draft", [
    dict(_MODEL, sha256="d" * 64, size=99),  # the same name: bom-ref decides
    dict(_MODEL, name="aaa-draft", sha256="0" * 64, license="Apache-2.0"),  # sorts before the model
    dict(_MODEL, name="zzz-draft", sha256="e" * 64, license="llama3.2 community license"),
], ids=["same-name", "sorts-first", "sorts-last"])
def test_draft_component_is_what_the_library_writes(draft: dict) -> None:
    got = mint_document_as_library(_MODEL, draft=draft)
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
