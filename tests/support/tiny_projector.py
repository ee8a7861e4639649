"""A random-weight CLIP projector: proves the path, not the quality.

No vision projector (``mmproj-*.gguf``) can be downloaded on this network (PyPI,
Debian and npm ship none), so the vision tests make one with the ``gguf`` package:
a LLaVA-style projector (``clip.projector_type`` = ``mlp``) over a two-block ViT,
32 wide, 28x28 images in 14x14 patches (4 image tokens), projecting to SmolLM2's
``n_embd`` (576) so llama.cpp's mtmd accepts it beside SmolLM2. The weights are
random (fixed seed): the engine loads it, encodes an image with it and feeds the
embeddings to the text model, whose answer means nothing.

The keys and tensor names are those the pinned llama.cpp's loader reads
(tools/mtmd/clip.cpp ``clip_model_loader``, tools/mtmd/clip-impl.h ``KEY_*``/``TN_*``,
the graph in tools/mtmd/models/llava.cpp): the patch embedding convolution,
position embeddings, per block q/k/v/out attention, two layer norms and an
up/down FFN (down's input width is ``n_ff``, not ``n_embd``, or the loader takes it
for the old swapped naming), and the projector ``mm.0`` → GELU → ``mm.2``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import gguf
import numpy as np

SMOLLM2_N_EMBD = 576
IMAGE_SIZE = 28
PATCH_SIZE = 14


def write_tiny_projector(path: Path, *, out_width: int = SMOLLM2_N_EMBD, seed: int = 21) -> Path:
    """Write the projector to ``path`` (about 1 MB) and return it."""
    rng = np.random.default_rng(seed)
    n_embd, n_ff, n_layer, n_head, hidden = 32, 64, 2, 4, 64
    n_patches = (IMAGE_SIZE // PATCH_SIZE) ** 2

    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name("dx-tiny-projector (random weights)")
    w.add_description("a random-weight CLIP projector made by DX's tests: proves the path, not the quality")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.embedding_length", n_embd)
    w.add_uint32("clip.vision.feed_forward_length", n_ff)
    w.add_uint32("clip.vision.block_count", n_layer)
    w.add_uint32("clip.vision.attention.head_count", n_head)
    w.add_uint32("clip.vision.projection_dim", out_width)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    w.add_uint32("clip.vision.patch_size", PATCH_SIZE)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    def t(name: str, *shape: int, scale: float = 0.1) -> None:
        # ggml shape (innermost first); numpy's is reversed
        w.add_tensor(name, (rng.standard_normal(shape[::-1]) * scale).astype(np.float32))

    def ones(name: str, n: int) -> None:
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    t("v.patch_embd.weight", PATCH_SIZE, PATCH_SIZE, 3, n_embd)
    t("v.position_embd.weight", n_embd, n_patches)
    for il in range(n_layer):
        p = f"v.blk.{il}"
        for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
            t(f"{p}.{part}.weight", n_embd, n_embd)
            t(f"{p}.{part}.bias", n_embd)
        for ln in ("ln1", "ln2"):
            ones(f"{p}.{ln}.weight", n_embd)
            t(f"{p}.{ln}.bias", n_embd)
        t(f"{p}.ffn_up.weight", n_embd, n_ff)
        t(f"{p}.ffn_up.bias", n_ff)
        t(f"{p}.ffn_down.weight", n_ff, n_embd)
        t(f"{p}.ffn_down.bias", n_embd)
    t("mm.0.weight", n_embd, hidden)
    t("mm.0.bias", hidden)
    t("mm.2.weight", hidden, out_width)
    t("mm.2.bias", out_width)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_png(width: int = 32, height: int = 32) -> bytes:
    """A small RGB PNG (a colour gradient), made with zlib: what a client would send as an image."""
    rows = b"".join(b"\0" + bytes(c for x in range(width) for c in (x * 8 % 256, y * 8 % 256, 128))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
