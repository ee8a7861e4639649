"""Step: the release manifest (``manifest.json`` + ``manifest.txt``) and each executable's facts file.

The formats and the directory-level work are ``dxbuild.release.manifest``'s; this
step only says what one mint's executables are (tier, engine, model, what a
machine needs to run them) and hands them over.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dxbuild.context import ArtifactType, BuildContext, Skip
from dxbuild.release.manifest import (
    FACTS_FORMAT,
    build_manifest,
    cpu_requirements,
    gather_facts,
    manifest_for_directory,
    manifest_text,
    parse_manifest_text,
    write_facts,
    write_manifest,
)
from dxverify.errors import MalformedInputError
from dxverify.hashing import sha256_file

# the release module's functions this step's tests reach through it
__all__ = ["artifact_facts", "manifest_for_directory", "manifest_text", "name", "parse_manifest_text", "run"]

name = "release manifest"


def _engine_info(ctx: BuildContext) -> tuple[dict[str, Any], Path | None]:
    engines = ctx.of(ArtifactType.ENGINE_DIR)
    if not engines:
        return {}, None
    d = engines[0].path
    try:
        return json.loads((d / "engine.json").read_text(encoding="utf-8")), d
    except (OSError, ValueError) as e:
        raise MalformedInputError(f"{d / 'engine.json'} cannot be read: {e}") from e


def artifact_facts(ctx: BuildContext, exe: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """The facts file for one minted executable (everything the manifest needs)."""
    from dx import __version__ as dx_version

    cell = ctx.cell
    engine, engine_dir = _engine_info(ctx)
    model = _model_facts(ctx.model)
    draft = _model_facts(ctx.draft)
    projector = _model_facts(getattr(ctx, "projector", None))
    adapter = _model_facts(getattr(ctx, "adapter", None))
    min_driver = engine.get("min_nvidia_driver", getattr(cell, "min_nvidia_driver", None))
    facts = {
        "dx_facts": FACTS_FORMAT,
        "file": exe.name,
        "tier": extra.get("tier") or cell.tier,
        "os": extra.get("os") or cell.os,
        "arch": extra.get("arch") or cell.arch,
        "dx_version": dx_version,
        "size": exe.stat().st_size,
        "sha256": extra.get("sha256") or sha256_file(exe),
        "engine": {
            "key": engine.get("key"),
            "llama_cpp_commit": engine.get("llama_cpp_commit"),
            "source": engine.get("source"),
            "source_sha256": engine.get("source_sha256"),
            "patches": engine.get("patches", []),
        },
        "model": model,
        "requirements": {
            "min_nvidia_driver": min_driver,
            "needs": list(engine.get("runtime_needs", getattr(cell, "runtime_needs", ()))),
            "cpu": cpu_requirements(engine_dir, dict(engine.get("cmake_flags", {}))),
        },
    }
    if draft is not None:  # only two-model executables carry the key: older facts files stay as they were
        facts["draft"] = draft
    if projector is not None:  # likewise only executables with a vision projector (--mmproj)
        facts["projector"] = projector
    if adapter is not None:  # likewise only executables with a LoRA adapter (--adapter)
        facts["adapter"] = adapter
    from dxbuild.steps.sbom import modelfile_facts

    modelfile = modelfile_facts(ctx)
    if modelfile is not None:  # likewise only executables minted from a Modelfile (--modelfile)
        facts["modelfile"] = modelfile
    return facts


def _model_facts(resolved: Any) -> dict[str, Any] | None:
    if resolved is None:
        return None
    return {"name": resolved.name, "source": resolved.source, "sha256": resolved.sha256,
            "size": resolved.size, "license": resolved.license}


def run(ctx: BuildContext) -> None:
    exes = ctx.of(ArtifactType.EXECUTABLE)
    if not exes:
        raise Skip("no executables were minted")
    facts = []
    for a in exes:
        f = artifact_facts(ctx, a.path, a.extra)
        ctx.add(ArtifactType.MANIFEST, write_facts(a.path, f), role="facts")
        facts.append(f)
    # The manifest covers every facts file in the output directory, so minting several cells
    # into one directory (one after another) gives one manifest for all of them.
    all_facts = gather_facts(ctx.out_dir, check_files=False)
    doc = build_manifest(ctx.out_dir, all_facts, facts[0]["dx_version"])
    for p in write_manifest(ctx.out_dir, doc):
        ctx.add(ArtifactType.MANIFEST, p)
