"""The committed JSON schemas for editors, generated from the recipe and matrix dataclasses.

``dxbuild schema --write`` regenerates them; a test checks the committed files
equal what the classes generate today.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from dxbuild.paths import project_root
from dxmatrix.recipes import schemas as recipe_schemas


def expected_schemas() -> dict[Path, str]:
    """{path under the project: file text} for every schema DX commits."""
    from dxmatrix.definition import matrix_schema

    root = project_root()
    out: dict[Path, Any] = {root / "recipes" / "schema" / name: s for name, s in recipe_schemas().items()}
    out[root / "matrix" / "matrix.schema.json"] = matrix_schema()
    return {p: json.dumps(s, indent=2) + "\n" for p, s in out.items()}


def check_schemas() -> list[Path]:
    """The schema files that are missing or differ from the generated ones."""
    return [p for p, text in expected_schemas().items()
            if not p.is_file() or p.read_text(encoding="utf-8") != text]


def write_schemas() -> list[Path]:
    written = []
    for p, text in expected_schemas().items():
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, p)
        written.append(p)
    return written
