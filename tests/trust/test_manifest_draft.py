"""A two-model executable's facts file and manifest entry carry the draft, and both schemas accept them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from support.schemas import validator

from dxbuild.steps import manifest


def test_draft_recorded_and_schema_valid(tmp_path: Path, minted_ctx) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    ctx = minted_ctx(out, "cpu", None, model=True)
    ctx.draft = dataclasses.replace(ctx.model, name="smollm2-draft", sha256="d" * 64, size=99,
                                             source="file:/tmp/d.gguf", license=None)
    manifest.run(ctx)
    facts = json.loads((out / "dx-smollm2-cpu-linux-x86_64.json").read_text())
    assert facts["draft"] == {"name": "smollm2-draft", "source": "file:/tmp/d.gguf", "sha256": "d" * 64,
                              "size": 99, "license": None}
    validator("facts.schema.json").validate(facts)
    doc = json.loads((out / "manifest.json").read_text())
    validator("manifest.schema.json").validate(doc)
    assert doc["artifacts"][0]["draft"]["name"] == "smollm2-draft"


def test_one_model_has_no_draft_key(tmp_path: Path, minted_ctx) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    manifest.run(minted_ctx(out, "cpu", None, model=True))
    assert "draft" not in json.loads((out / "dx-smollm2-cpu-linux-x86_64.json").read_text())
    assert "draft" not in json.loads((out / "manifest.json").read_text())["artifacts"][0]
