"""An executable with a vision projector (``--mmproj``) or a LoRA adapter (``--adapter``): its facts file,
manifest entry and SBOM carry that entry, and the schemas accept them. One case per role; each role's
names, hashes and SBOM words are in ``ROLES``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from support.schemas import validator
from test_sbom import _MODEL, mint_document_as_library

from dxbuild.steps import manifest, sbom

# role -> its entry as the SBOM takes it, its bom-ref, the words it adds to the executable's description,
# and the other further entries that must stay out of its facts file.
ROLES: dict[str, dict[str, Any]] = {
    "projector": dict(entry=dict(_MODEL, name="mmproj-tiny", sha256="f" * 64, size=305280, license=None),
                      ref=sbom.PROJECTOR_REF, words="+ vision projector", absent=("draft",)),
    "adapter": dict(entry=dict(_MODEL, name="tiny-lora", sha256="e" * 64, size=1213216, license=None),
                    ref=sbom.ADAPTER_REF, words="+ LoRA adapter", absent=("draft", "projector")),
}


@pytest.mark.parametrize("role", list(ROLES))
def test_entry_in_facts_and_manifest(role: str, tmp_path: Path, minted_ctx) -> None:  # type: ignore[no-untyped-def]
    e = ROLES[role]["entry"]
    out = tmp_path / "out"
    ctx = minted_ctx(out, "cpu", None, model=True)
    setattr(ctx, role, dataclasses.replace(ctx.model, name=e["name"], sha256=e["sha256"], size=e["size"],
                                           source=f"file:/tmp/{e['name']}.gguf", license=None))
    manifest.run(ctx)
    facts = json.loads((out / "dx-smollm2-cpu-linux-x86_64.json").read_text())
    assert facts[role] == {"name": e["name"], "source": f"file:/tmp/{e['name']}.gguf",
                           "sha256": e["sha256"], "size": e["size"], "license": None}
    for other in ROLES[role]["absent"]:
        assert other not in facts
    validator("facts.schema.json").validate(facts)
    doc = json.loads((out / "manifest.json").read_text())
    validator("manifest.schema.json").validate(doc)
    assert doc["artifacts"][0][role]["name"] == e["name"]


@pytest.mark.parametrize("role", list(ROLES))
def test_entry_sbom_component_is_what_the_library_writes(role: str) -> None:
    entry, ref_id = ROLES[role]["entry"], ROLES[role]["ref"]
    got = mint_document_as_library(_MODEL, **{role: entry})
    models = {c["bom-ref"]: c for c in got["components"] if c["type"] == "machine-learning-model"}
    assert set(models) == {"model", ref_id}
    assert models[ref_id]["hashes"] == [{"alg": "SHA-256", "content": entry["sha256"]}]
    assert {"name": "dx:model:role", "value": role} in models[ref_id]["properties"]
    assert ROLES[role]["words"] in got["metadata"]["component"]["description"]
