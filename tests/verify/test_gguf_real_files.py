"""Real GGUFs: SmolLM2-135M Q4_1 and the vocab files shipped with the pinned llama.cpp, all accepted."""

from __future__ import annotations

import time
from pathlib import Path

import gguf
import pytest

from dxverify.gguf import GGUFError, read_gguf


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_gguf: Path) -> gguf.GGUFReader:
    """gguf-py's view of the same file: an independent oracle (slow: seconds, so read once)."""
    return gguf.GGUFReader(smollm2_gguf)


def test_smollm2_summary(smollm2_gguf: Path, smollm2_reference: gguf.GGUFReader) -> None:
    ref = smollm2_reference
    with read_gguf(smollm2_gguf) as gf:
        s = gf.summary()
        assert s.architecture == "llama"
        assert s.tensor_count == len(ref.tensors) == 272
        assert s.parameters == sum(int(t.n_elements) for t in ref.tensors)
        assert s.context_length == 8192
        assert s.vocab_size == 49152
        assert s.chat_template is True
        assert s.file_type == "Q4_1"
        assert set(s.quantization) == {"Q4_1", "Q8_0", "F32"}
        assert sum(s.quantization.values()) == sum(int(t.n_bytes) for t in ref.tensors)
        assert s.file_size == smollm2_gguf.stat().st_size
        assert gf.data_offset == ref.data_offset
        for mine, theirs in zip(gf.tensors, ref.tensors, strict=True):
            assert (mine.name, mine.data_start, mine.n_bytes) == (
                theirs.name,
                theirs.data_offset,
                theirs.n_bytes,
            )
        meta = gf.metadata(max_array=16)
        assert meta["general.architecture"] == "llama"
        assert "tokenizer.ggml.tokens" not in meta  # 49152 entries: left out undecoded
        assert gf.get("tokenizer.chat_template").startswith("{%") or "{{" in gf.get("tokenizer.chat_template")
        assert gf.get("tokenizer.ggml.tokens")[:3] == list(ref.fields["tokenizer.ggml.tokens"].contents()[:3])


def test_smollm2_structure_check_is_fast_enough_to_run_at_every_start(smollm2_gguf: Path) -> None:
    # Not a benchmark (see tests/bench/bench_verify.py): a guard against an accidental O(file) pass.
    best = min(_timed(lambda: read_gguf(smollm2_gguf).close()) for _ in range(3))
    assert best < 1.0


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_smollm2_truncated_at_structural_boundaries(
    smollm2_gguf: Path, smollm2_reference: gguf.GGUFReader
) -> None:
    """Cut the real file (via the region length, no copy) at KV, tensor-info and tensor boundaries."""
    ref = smollm2_reference
    cuts = {0, 3, 4, 8, 16, 23, 24}
    cuts |= {f.offset for f in ref.fields.values() if f.offset > 0}
    infos = sorted({t.field.offset for t in ref.tensors})
    cuts |= set(infos[:20] + infos[-20:])
    datas = [int(t.data_offset) for t in ref.tensors]
    cuts |= set(datas[:10] + datas[-10:]) | {
        int(t.data_offset) + int(t.n_bytes) - 1 for t in ref.tensors[-5:]
    }
    cuts |= {smollm2_gguf.stat().st_size - 1}
    for n in sorted(cuts):
        with pytest.raises(GGUFError) as exc:
            read_gguf(smollm2_gguf, 0, n)
        assert exc.value.offset <= n, (n, str(exc.value))


def test_vocab_files_of_the_pinned_llama_cpp(vocab_ggufs: list[Path]) -> None:
    # gguf-py takes minutes on the 256k-token vocabularies, so the oracle here is the file itself:
    # every tokenizer array must agree in length with the token list (checked by the reader).
    for path in vocab_ggufs:
        with read_gguf(path) as gf:
            s = gf.summary()
            assert s.architecture, path.name
            assert s.vocab_size and s.vocab_size > 1000, path.name
            assert s.file_size == path.stat().st_size
            for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
                if key in gf.kv:
                    assert len(gf.kv[key].value) == s.vocab_size
