"""dxverify.spec_pair refuses exactly the pairs llama.cpp's common_speculative_are_compatible refuses.

Hand-built GGUFs (gguf_handcraft, independent of the reader) change one vocabulary
fact at a time; the real SmolLM2 and the pinned llama.cpp's vocab GGUFs show it on
files that exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.gguf_handcraft import ARR, BOOL, STR, U32, tiny_model

from dxverify.errors import ConfigurationError, IncompatibleModelsError
from dxverify.spec_pair import check_pair


def model(path: Path, n_vocab: int = 16, tokens: list[str] | None = None, drop: tuple[str, ...] = (),
          **keys: tuple[int, Any]) -> Path:
    """tiny_model with its token list (and any tokenizer key) replaced; ``keys`` use '_' for '.'."""
    craft = tiny_model(n_vocab)
    tokens = tokens if tokens is not None else [f"t{i}" for i in range(n_vocab)]
    extra = {k.replace("__", "."): v for k, v in keys.items()}
    kvs = []
    for key, vtype, value in craft.kvs:
        if key in drop:
            continue
        if key == "tokenizer.ggml.tokens":
            value = (STR, tokens)
        if key in extra:
            vtype, value = extra.pop(key)
        kvs.append((key, vtype, value))
    kvs += [(k, t, v) for k, (t, v) in extra.items()]
    craft.kvs = kvs
    path.write_bytes(craft.build().data)
    return path


def refused(target: Path, draft: Path, **kw: Any) -> str:
    with pytest.raises(IncompatibleModelsError) as e:
        check_pair(target, draft, **kw)
    line = str(e.value)
    assert "\n" not in line and line.startswith("draft "), line
    return line


def test_error_is_a_configuration_error() -> None:
    assert issubclass(IncompatibleModelsError, ConfigurationError)
    assert IncompatibleModelsError("x").exit_code == 2


def test_same_model_passes(smollm2_gguf: Path) -> None:
    check_pair(smollm2_gguf, smollm2_gguf)


def test_smollm2_against_other_families(smollm2_gguf: Path, pinned_llama_cpp: Path) -> None:
    """SPM (Gemma 3, Llama 2's tokenizer) against SmolLM2's BPE: the type; GPT-2's BPE: the size."""
    vocab = pinned_llama_cpp / "models"
    assert "vocabulary type differs (bpe vs spm)" in refused(smollm2_gguf, vocab / "ggml-vocab-llama-spm.gguf")
    line = refused(smollm2_gguf, vocab / "ggml-vocab-gpt-2.gguf")
    assert "vocabulary size differs by 1105 (49152 vs 50257" in line
    assert "ggml-vocab-gpt-2.gguf" in line and "pick a draft from the same model family" in line
    # the same vocabulary with a different name is fine
    check_pair(vocab / "ggml-vocab-llama-spm.gguf", vocab / "ggml-vocab-llama-spm.gguf")


def test_token_from_id_5_must_match(tmp_path: Path) -> None:
    t = model(tmp_path / "t.gguf")
    seven = [f"t{i}" for i in range(16)]
    seven[7] = "changed"
    line = refused(t, model(tmp_path / "d7.gguf", tokens=seven))
    assert "token 7 differs ('t7' vs 'changed')" in line, line
    three = [f"t{i}" for i in range(16)]
    three[3] = "changed"
    check_pair(t, model(tmp_path / "d3.gguf", tokens=three))  # ids below 5 are not compared
    last = [f"t{i}" for i in range(16)]
    last[15] = "t15x"
    assert "token 15 differs" in refused(t, model(tmp_path / "d15.gguf", tokens=last))


def test_texts_compare_as_c_strings(tmp_path: Path) -> None:
    """llama.cpp compares with strcmp: bytes after a NUL do not count."""
    a = [f"t{i}" for i in range(16)]
    b = list(a)
    a[9], b[9] = "x\0one", "x\0two"
    check_pair(model(tmp_path / "a.gguf", tokens=a), model(tmp_path / "b.gguf", tokens=b))


def test_vocab_size_within_128(tmp_path: Path) -> None:
    t = model(tmp_path / "t.gguf", n_vocab=16)
    check_pair(t, model(tmp_path / "d128.gguf", n_vocab=16 + 128))
    check_pair(model(tmp_path / "big.gguf", n_vocab=16 + 128), t)
    assert "differs by 129 (16 vs 145 tokens" in refused(t, model(tmp_path / "d129.gguf", n_vocab=16 + 129))


def test_bos_ids_and_flags(tmp_path: Path) -> None:
    """SPM adds BOS by default (llama-vocab.cpp), so the ids must match; with add_bos false they need not."""
    t = model(tmp_path / "t.gguf")
    line = refused(t, model(tmp_path / "d.gguf", tokenizer__ggml__bos_token_id=(U32, 3)))
    assert "BOS differs (add_bos True vs True, id 1 vs 3)" in line, line
    off = {"tokenizer__ggml__add_bos_token": (BOOL, False)}
    check_pair(model(tmp_path / "t0.gguf", **off),
               model(tmp_path / "d0.gguf", tokenizer__ggml__bos_token_id=(U32, 3), **off))
    assert "add_bos True vs False" in refused(t, model(tmp_path / "d1.gguf", **off))


def test_eos(tmp_path: Path) -> None:
    """T5's UGM vocabulary adds EOS by default; SPM does not, unless the key says so."""
    ugm = {"tokenizer__ggml__model": (STR, "t5")}
    line = refused(model(tmp_path / "t.gguf", **ugm),
                   model(tmp_path / "d.gguf", tokenizer__ggml__eos_token_id=(U32, 4), **ugm))
    assert "EOS differs (add_eos True vs True, id 2 vs 4)" in line, line
    check_pair(model(tmp_path / "s.gguf"), model(tmp_path / "s4.gguf", tokenizer__ggml__eos_token_id=(U32, 4)))
    on = {"tokenizer__ggml__add_eos_token": (BOOL, True)}
    assert "EOS differs" in refused(model(tmp_path / "s1.gguf", **on),
                                    model(tmp_path / "s2.gguf", tokenizer__ggml__eos_token_id=(U32, 4), **on))


def test_bpe_add_bos_follows_the_pre_tokenizer(tmp_path: Path) -> None:
    """BPE adds BOS for llama3-style pre-tokenizers only; a missing key keeps the default."""
    def bpe(name: str, pre: str, bos: int) -> Path:
        return model(tmp_path / name, tokenizer__ggml__model=(STR, "gpt2"), tokenizer__ggml__pre=(STR, pre),
                     tokenizer__ggml__bos_token_id=(U32, bos), tokenizer__ggml__merges=(ARR, (STR, ["t a"])))
    check_pair(bpe("a.gguf", "smollm", 1), bpe("b.gguf", "smollm", 3))
    assert "BOS differs" in refused(bpe("c.gguf", "llama-bpe", 1), bpe("d.gguf", "llama-bpe", 3))


def test_type_is_the_enum_not_the_string(tmp_path: Path) -> None:
    """'gpt2' and 'whitespace' are both LLAMA_VOCAB_TYPE_BPE; 'llama' is SPM."""
    kw = {"tokenizer__ggml__merges": (ARR, (STR, ["t a"]))}
    check_pair(model(tmp_path / "a.gguf", tokenizer__ggml__model=(STR, "gpt2"), **kw),
               model(tmp_path / "b.gguf", tokenizer__ggml__model=(STR, "whitespace"), **kw))
    assert "vocabulary type differs (spm vs bpe)" in refused(
        model(tmp_path / "c.gguf"), model(tmp_path / "d.gguf", tokenizer__ggml__model=(STR, "gpt2"), **kw))


def test_no_tokenizer_is_named(tmp_path: Path) -> None:
    line = refused(model(tmp_path / "t.gguf"), model(tmp_path / "d.gguf", drop=("tokenizer.ggml.model",)))
    assert "has no vocabulary (no tokenizer.ggml.model key)" in line


def test_embedded_at_an_offset(tmp_path: Path) -> None:
    """Both GGUFs inside one larger file (a minted executable), found by offset and length."""
    t = model(tmp_path / "t.gguf").read_bytes()
    seven = [f"t{i}" for i in range(16)]
    seven[7] = "x"
    d = model(tmp_path / "d.gguf", tokens=seven).read_bytes()
    exe = tmp_path / "exe"
    exe.write_bytes(b"\x7fELF" + b"\0" * 65532 + t + b"\0" * 100 + d + b"trailer")
    to, do = 65536, 65536 + len(t) + 100
    check_pair(exe, exe, target_offset=to, target_length=len(t), draft_offset=to, draft_length=len(t))
    line = refused(exe, exe, target_offset=to, target_length=len(t), draft_offset=do, draft_length=len(d))
    assert f"(exe@{do})" in line and "token 7 differs" in line, line
