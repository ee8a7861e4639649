"""A tiny real reranker GGUF, made here: BERT with ``bert.pooling_type`` = rank and a classifier head.

No reranker GGUF can be downloaded on this network (PyPI, Debian and npm ship
none), so the rerank tests make one with the ``gguf`` package: two layers, 32
wide, a WordPiece vocabulary of a few dozen words, random weights. The real
``llama-server --rerank`` loads it and scores with it; the scores mean nothing,
the shapes, the count and the order are what the tests check. Its layout is
llama.cpp's BERT (``src/models/bert.cpp``: ``cls`` + ``cls.output`` heads, as
``convert_hf_to_gguf.py`` writes for ``BertForSequenceClassification``).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

WORDS = ("the", "sky", "is", "blue", "because", "of", "rayleigh", "scattering", "paris", "capital", "france",
         "cats", "dogs", "bread", "water", "ocean", "music", "piano", "light", "sun", "red", "green", "what",
         "why", "where", "who", "how", "a", "in", "and")


def write_tiny_reranker(path: Path, *, pooling_rank: bool = True, seed: int = 21) -> Path:
    """Write the model to ``path`` (about 100 KB); ``pooling_rank=False`` makes the same BERT as an embedder."""
    rng = np.random.default_rng(seed)
    n_embd, n_ff, n_layer, n_head, n_ctx = 32, 64, 2, 2, 128
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + ["\u2581" + w for w in WORDS]
    types = [gguf.TokenType.CONTROL] * 5 + [gguf.TokenType.NORMAL] * len(WORDS)

    w = gguf.GGUFWriter(str(path), "bert")
    w.add_name("dx-tiny-reranker")
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_block_count(n_layer)
    w.add_head_count(n_head)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.RANK if pooling_rank else gguf.PoolingType.MEAN)
    if pooling_rank:
        w.add_classifier_output_labels(["relevant"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_type_count(2)
    w.add_unk_token_id(1)
    w.add_pad_token_id(0)
    w.add_bos_token_id(2)   # [CLS]
    w.add_sep_token_id(3)   # [SEP]
    w.add_eos_token_id(3)
    w.add_mask_token_id(4)
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)

    def t(name: str, *shape: int) -> None:
        # numpy shape is ggml's reversed: a {n_embd, n_vocab} ggml tensor is (n_vocab, n_embd) here
        w.add_tensor(name, (rng.standard_normal(shape[::-1]) * 0.2).astype(np.float32))

    def ones(name: str, n: int) -> None:
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    def zeros(name: str, n: int) -> None:
        w.add_tensor(name, np.zeros(n, dtype=np.float32))

    t("token_embd.weight", n_embd, len(tokens))
    t("token_types.weight", n_embd, 2)
    t("position_embd.weight", n_embd, n_ctx)
    ones("token_embd_norm.weight", n_embd)
    zeros("token_embd_norm.bias", n_embd)
    for i in range(n_layer):
        for q in ("q", "k", "v"):
            t(f"blk.{i}.attn_{q}.weight", n_embd, n_embd)
            zeros(f"blk.{i}.attn_{q}.bias", n_embd)
        t(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        zeros(f"blk.{i}.attn_output.bias", n_embd)
        ones(f"blk.{i}.attn_output_norm.weight", n_embd)
        zeros(f"blk.{i}.attn_output_norm.bias", n_embd)
        t(f"blk.{i}.ffn_up.weight", n_embd, n_ff)
        zeros(f"blk.{i}.ffn_up.bias", n_ff)
        t(f"blk.{i}.ffn_down.weight", n_ff, n_embd)
        zeros(f"blk.{i}.ffn_down.bias", n_embd)
        ones(f"blk.{i}.layer_output_norm.weight", n_embd)
        zeros(f"blk.{i}.layer_output_norm.bias", n_embd)
    if pooling_rank:
        t("cls.weight", n_embd, n_embd)
        zeros("cls.bias", n_embd)
        t("cls.output.weight", n_embd, 1)
        zeros("cls.output.bias", 1)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
