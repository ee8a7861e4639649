"""A ``~/.ollama/models`` tree laid out as Ollama lays it out, with real files (the store and CLI tests read it)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

SMOL_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def make_ollama_tree(root: Path, gguf: Path) -> Path:
    """A ~/.ollama/models laid out as Ollama lays it out, with real files."""
    blobs = root / "blobs"
    link_or_copy(gguf, blobs / f"sha256-{SMOL_SHA}")
    config = json.dumps({"model_format": "gguf", "model_family": "llama", "model_type": "135M",
                         "file_type": "Q4_1"}).encode()
    cfg_sha = hashlib.sha256(config).hexdigest()
    (blobs / f"sha256-{cfg_sha}").write_bytes(config)

    def manifest(rel: str, model_digest: str) -> None:
        p = root / "manifests" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "digest": f"sha256:{cfg_sha}", "size": len(config)},
            "layers": [
                {"mediaType": "application/vnd.ollama.image.model", "digest": model_digest, "size": 1},
                {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "1" * 64, "size": 1},
            ],
        }))

    manifest("registry.ollama.ai/library/smollm2/135m", f"sha256:{SMOL_SHA}")
    manifest("registry.ollama.ai/someone/smol/latest", f"sha256:{SMOL_SHA}")
    manifest("hf.co/HuggingFaceTB/SmolLM2-GGUF/Q4_1", f"sha256:{SMOL_SHA}")
    manifest("registry.ollama.ai/library/gone/latest", "sha256:" + "2" * 64)  # blob missing: skipped
    (root / "manifests" / "registry.ollama.ai" / "library" / "junk").mkdir()
    (root / "manifests" / "registry.ollama.ai" / "library" / "junk" / "latest").write_text("not json")
    return root
