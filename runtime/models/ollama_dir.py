"""Models Ollama already downloaded, found read-only under ``~/.ollama/models``.

Ollama keeps ``manifests/<host>/<namespace>/<model>/<tag>`` (OCI-style JSON)
pointing at ``blobs/sha256-<hex>``; the layer with media type
``application/vnd.ollama.image.model`` is the GGUF. DX lists and serves those
files where they lie and never writes there.

``dx pull NAME`` looks here before it asks the registry (``find_manifest``):
when Ollama already has the manifest and every blob, the model is verified and
hard-linked (or copied, across filesystems) into DX's store, and the small
layers are read from Ollama's blobs — nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from dx import config
from dx.models.check import ModelFacts
from dx.models.entry import ModelEntry
from dxverify.errors import MalformedInputError

if TYPE_CHECKING:
    from dx.registry.ollama import Layer, Manifest, RegistryName

MODEL_LAYER = "application/vnd.ollama.image.model"
DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
_MAX_MANIFEST = 1 << 20


def default_ollama_dir() -> Path:
    """Where Ollama keeps models: ``$OLLAMA_MODELS`` or ``~/.ollama/models``."""
    env = config.ollama_models_dir()
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


def discover(models_dir: Path) -> list[ModelEntry]:
    """Every Ollama model whose manifest and GGUF blob are present; broken ones are skipped."""
    root = Path(models_dir) / "manifests"
    if not root.is_dir():
        return []
    out = []
    for manifest in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = manifest.relative_to(root).parts
        if len(rel) < 3 or any(part.startswith(".") for part in rel):
            continue
        entry = _read(Path(models_dir), manifest, rel)
        if entry is not None:
            out.append(entry)
    return out


def display_name(rel: tuple[str, ...]) -> str:
    """Ollama's short names: ``registry.ollama.ai/library/llama3.2/3b`` is ``llama3.2:3b``."""
    *name_parts, tag = rel
    if name_parts[0] == DEFAULT_REGISTRY:
        name_parts = name_parts[1:]
        if name_parts and name_parts[0] == DEFAULT_NAMESPACE:
            name_parts = name_parts[1:]
    return f"{'/'.join(name_parts)}:{tag}"


def _read(models_dir: Path, manifest: Path, rel: tuple[str, ...]) -> ModelEntry | None:
    try:
        if manifest.stat().st_size > _MAX_MANIFEST:
            return None
        doc = json.loads(manifest.read_text())
        layers = doc.get("layers") or []
        layer = next(ly for ly in layers if isinstance(ly, dict) and ly.get("mediaType") == MODEL_LAYER)
        digest = str(layer["digest"])
    except (OSError, ValueError, StopIteration, KeyError, TypeError, AttributeError):
        return None
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
        return None
    blob = models_dir / "blobs" / f"sha256-{hexd}"
    try:
        st = blob.stat()
    except OSError:
        return None
    return ModelEntry(
        name=display_name(rel),
        sha256=hexd,
        size=st.st_size,
        modified=manifest.stat().st_mtime,
        path=blob,
        source="ollama",
        read_only=True,
        facts=_facts_from_config(models_dir, doc),
    )


def _facts_from_config(models_dir: Path, doc: dict) -> ModelFacts:
    """Ollama's config blob already names family and quantisation: no need to open the GGUF to list."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
        cfg_digest = str(doc["config"]["digest"]).partition(":")[2]
        cfg_path = models_dir / "blobs" / f"sha256-{cfg_digest}"
        if len(cfg_digest) == 64 and cfg_path.stat().st_size < _MAX_MANIFEST:
            cfg = json.loads(cfg_path.read_text())
            return ModelFacts(
                family=str(cfg.get("model_family", "")),
                arch=str(cfg.get("model_family", "")),
                quant=str(cfg.get("file_type", "")),
                parameter_size=str(cfg.get("model_type", "")),
            )
    return ModelFacts()


def find_manifest(models_dir: Path, name: RegistryName) -> tuple[Manifest, Path] | None:
    """Ollama's manifest for ``name`` when it and every blob it names are present with the right sizes."""

    path = Path(models_dir) / "manifests" / name.host / name.namespace / name.model / name.tag
    try:
        if not path.is_file() or path.stat().st_size > _MAX_MANIFEST:
            return None
        from dx.registry.ollama import Manifest  # lazy: urllib.request loads on the first pull

        manifest = Manifest.parse(path.read_bytes(), str(path))
        for layer in manifest.layers:
            if (Path(models_dir) / "blobs" / f"sha256-{layer.sha256}").stat().st_size != layer.size:
                return None
    except (OSError, MalformedInputError):
        return None
    return manifest, Path(models_dir)


def manifest_of_blob(blob: Path, name: str) -> tuple[Manifest, Path, RegistryName] | None:
    """The manifest of ``name`` in the Ollama store ``blob`` lies in, when its model layer is that blob.

    A blob served in place answers to the name it was listed under; its other layers (params, system,
    projector) are read only through the manifest that really points at it.
    """
    from dx.registry.ollama import parse_registry_name  # lazy: urllib.request loads on the first pull

    if not name:
        return None
    rname = parse_registry_name(name)
    found = find_manifest(blob.parent.parent, rname)
    if found is None or found[0].model_layer(rname.short).sha256 != blob.name.removeprefix("sha256-"):
        return None
    return found[0], found[1], rname


def read_layer(models_dir: Path, name: RegistryName, layer: Layer) -> bytes:
    """A small layer out of Ollama's blobs, checked against its digest (read-only)."""

    from dx.registry.ollama import (  # lazy: urllib.request loads on the first pull
        MAX_SMALL_LAYER,
        check_bytes,
    )

    if layer.size > MAX_SMALL_LAYER:
        raise MalformedInputError(f"{name.short}: the {layer.kind} layer is {layer.size} bytes")
    data = (Path(models_dir) / "blobs" / f"sha256-{layer.sha256}").read_bytes()
    check_bytes(name, layer, data)
    return data
