"""Is this GGUF a multimodal projector the engine can load with ``--mmproj``, and does it fit the model?

llama.cpp's projector loader (tools/mtmd/clip.cpp, ``clip_model_loader``) reads a GGUF
whose ``general.architecture`` is ``clip`` and whose ``clip.has_vision_encoder`` is
true for images; mtmd (tools/mtmd/mtmd.cpp) then refuses a projector whose output
width differs from the text model's ``n_embd`` ("mismatch between text model …").
The engine finds that out only after loading both files; a mint (``dxbuild --mmproj``)
and ``dx verify`` of an executable read the same facts from the headers in
milliseconds and refuse with one line.

The output width is known here for the LLaVA-style projectors (``mlp``, ``mlp_norm``:
the last ``mm.N.weight``'s rows, as ``clip_n_mmproj_embd`` reads it); for other
projector types the width check is left to the engine.
"""

from __future__ import annotations

from pathlib import Path

from dxverify.errors import IncompatibleModelsError, MalformedInputError
from dxverify.gguf import GGUFFile, read_gguf

CLIP_ARCH = "clip"
_HINT = "pass the projector GGUF (an mmproj-*.gguf) made for this model"


def projector_type(g: GGUFFile) -> str:
    """``clip.projector_type`` (or ``clip.vision.projector_type``), "" when unnamed."""
    for key in ("clip.projector_type", "clip.vision.projector_type"):
        v = g.get(key)
        if isinstance(v, str) and v:
            return v
    return ""


def projector_width(g: GGUFFile) -> int | None:
    """The width of the embeddings the projector hands the text model, when it can be told from the header."""
    if projector_type(g) not in ("mlp", "mlp_norm"):
        return None
    shapes = {t.name: t.shape for t in g.tensors}
    for name in ("mm.4.weight", "mm.3.weight", "mm.2.weight", "mm.0.weight"):
        shape = shapes.get(name)
        if shape is not None and len(shape) >= 2:
            return int(shape[1])
    return None


def check_projector(path: str | Path, offset: int = 0, length: int | None = None, *, label: str = "",
                    model: str | Path | None = None, model_offset: int = 0,
                    model_length: int | None = None) -> str:
    """Raise (one line) unless ``path`` is a vision projector (and fits ``model``'s width); its type otherwise."""
    where = label or str(path)
    with read_gguf(path, offset, length) as g:
        arch = g.get("general.architecture")
        if arch != CLIP_ARCH:
            raise MalformedInputError(
                f"{where} is not a multimodal projector (general.architecture {arch!r}, expected {CLIP_ARCH!r})",
                hint=_HINT)
        if g.get("clip.has_vision_encoder") is not True:
            raise MalformedInputError(f"{where} has no vision encoder (clip.has_vision_encoder is not true)",
                                      hint=_HINT)
        kind = projector_type(g)
        width = projector_width(g)
    if model is None or width is None:
        return kind
    with read_gguf(model, model_offset, model_length) as m:
        m_arch = m.get("general.architecture")
        n_embd = m.get(f"{m_arch}.embedding_length")
    if isinstance(n_embd, int) and n_embd != width:
        raise IncompatibleModelsError(
            f"{where} projects to width {width}, but the model's n_embd is {n_embd} (llama.cpp refuses the pair)",
            hint=_HINT)
    return kind
