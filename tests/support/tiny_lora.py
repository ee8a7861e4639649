"""A random LoRA adapter for SmolLM2-135M: proves the adapter reaches the model, not a fine-tune.

No LoRA GGUF for SmolLM2 can be downloaded on this network, so the adapter tests
make one with the ``gguf`` package. Its keys, tensor names and shapes are those the
pinned llama.cpp's loader reads (src/llama-adapter.cpp ``llama_adapter_lora_init_impl``):

- ``general.type`` = ``adapter``, ``general.architecture`` = the base model's (``llama``
  for SmolLM2; the loader refuses "model arch and LoRA arch mismatch"), ``adapter.type``
  = ``lora``, ``adapter.lora.alpha`` (a float; the engine scales B·A by alpha / rank);
- for each adapted base tensor ``W`` (ggml shape ``[n_in, n_out]``), a pair
  ``W.lora_a`` of ggml shape ``[n_in, r]`` and ``W.lora_b`` of ``[r, n_out]``
  (the loader checks ``W.ne[0] == a.ne[0]``, ``W.ne[1] == b.ne[1]``, ``a.ne[1] == b.ne[0]``).

The weights are random (fixed seed), rank 8, on the attention output and the FFN down
projection of the first blocks, large enough that greedy output measurably changes
(tests/runtime/engine/test_lora_engine.py checks that against llama-server with and
without ``--lora``, and that ``--lora-scaled FILE 0`` gives the bare model's answer).
About 1 MB.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

# SmolLM2-135M: n_embd 576, n_ff 1536, 30 blocks.
SMOLLM2_N_EMBD = 576
SMOLLM2_N_FF = 1536
RANK = 8
# base tensor -> (n_in, n_out) in ggml order, as the model file has them
SMOLLM2_TARGETS = {
    **{f"blk.{i}.attn_output.weight": (SMOLLM2_N_EMBD, SMOLLM2_N_EMBD) for i in range(4)},
    **{f"blk.{i}.ffn_down.weight": (SMOLLM2_N_FF, SMOLLM2_N_EMBD) for i in range(4)},
}


def write_tiny_lora(path: Path, *, arch: str = "llama", targets: dict[str, tuple[int, int]] | None = None,
                    rank: int = RANK, alpha: float = float(RANK), scale: float = 1.0, seed: int = 22) -> Path:
    """Write the adapter to ``path`` and return it. ``arch``/``targets`` make deliberately wrong ones for tests."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_name("dx-tiny-lora (random weights)")
    w.add_description("a random LoRA made by DX's tests: proves the adapter reaches the model, not a fine-tune")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, (n_in, n_out) in (targets or SMOLLM2_TARGETS).items():
        # numpy shapes are ggml's reversed: lora_a ggml [n_in, r] -> numpy (r, n_in)
        a = rng.standard_normal((rank, n_in)) * (scale / np.sqrt(n_in))
        b = rng.standard_normal((n_out, rank)) * scale
        w.add_tensor(f"{name}.lora_a", a.astype(np.float32))
        w.add_tensor(f"{name}.lora_b", b.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
