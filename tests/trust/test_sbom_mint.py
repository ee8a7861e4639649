"""The SBOM of real mints: two mints of the same inputs write byte-identical, schema-valid files."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from dxbuild.paths import cache_dir
from dxbuild.steps.sbom import PART_NAME

pytestmark = pytest.mark.integration
SBOM = f"dx-smollm2-cpu-linux-{platform.machine()}.cdx.json"


def test_two_mints_write_the_same_sbom(mint_release_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    res = subprocess.run([sys.executable, "-m", "dxbuild", "--gpu", "cpu", "--model", "smollm2", "--no-bench",
                          "-o", str(out)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    first = (mint_release_dir / SBOM).read_bytes()
    assert (out / SBOM).read_bytes() == first
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(first.decode()) is None
    doc = json.loads(first)
    refs = {c["bom-ref"] for c in doc["components"]}
    assert {"llama.cpp", "cpython", "nuitka", "model"} <= refs and any(r.startswith("native:") for r in refs)
    # The bundle's share was made once and kept beside its bundle.json.
    kept = [p for p in (cache_dir() / "bundles").glob(f"*/{PART_NAME}")
            if json.loads(p.read_text())["components"] == [c for c in doc["components"] if c["bom-ref"] != "model"]]
    assert kept and (kept[0].parent / "bundle.json").is_file()
