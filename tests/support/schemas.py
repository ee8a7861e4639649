"""DX's JSON schemas (ci/schemas) as one validator registry: a schema may $ref another by file name."""

from __future__ import annotations

import json

import jsonschema
from referencing import Registry, Resource

from dxbuild.paths import ci_dir

SCHEMAS = ci_dir() / "schemas"


def validator(name: str) -> jsonschema.Draft202012Validator:
    docs = {p.name: json.loads(p.read_text()) for p in SCHEMAS.glob("*.schema.json")}
    registry = Registry().with_resources(
        (n, Resource.from_contents(d)) for n, d in docs.items()
    )
    return jsonschema.Draft202012Validator(docs[name], registry=registry)
