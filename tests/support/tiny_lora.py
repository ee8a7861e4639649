"""A LoRA adapter GGUF for SmolLM2-135M, made here: no published adapter for it can be fetched offline.

llama.cpp's adapter format (src/llama-adapter.cpp on the pinned engine): ``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha``, the base's ``general.architecture``, and for each
adapted weight ``W`` (ggml shape ``[n_in, n_out]``) a pair ``W.lora_a`` ``[n_in, rank]`` and
``W.lora_b`` ``[rank, n_out]``, applied as ``W + (alpha / rank) * B A``. Random F32 factors on every
layer's ``attn_q`` (SmolLM2: 576 x 576, 30 layers) move the model enough to change its greedy output;
the file is written with gguf-py (the writer llama.cpp's own converters use), about 0.6 MB.
"""

from __future__ import annotations

from pathlib import Path

N_EMBD, N_LAYERS = 576, 30  # SmolLM2-135M


def smollm2_lora(path: Path, *, rank: int = 4, scale: float = 0.3, seed: int = 0) -> Path:
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(rank))
    for i in range(N_LAYERS):
        # numpy shapes are ggml's reversed: lora_a ne=[n_in, rank] -> (rank, n_in)
        w.add_tensor(f"blk.{i}.attn_q.weight.lora_a", (rng.standard_normal((rank, N_EMBD)) * scale).astype(np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight.lora_b", (rng.standard_normal((N_EMBD, rank)) * scale).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
