"""dxverify.adapter.check_adapter: a LoRA adapter GGUF that fits the base model passes; everything llama.cpp's
adapter loader (src/llama-adapter.cpp) would refuse is refused with one line, before any engine starts."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from support.tiny_lora import RANK, SMOLLM2_TARGETS, write_tiny_lora

from dxverify.adapter import check_adapter
from dxverify.errors import ConfigurationError, IncompatibleModelsError, MalformedInputError


def _write(path: Path, *, arch: str = "llama", general_type: str | None = "adapter", adapter_type: str | None = "lora",
           alpha: object = 8.0, tensors: dict[str, tuple[int, ...]] | None = None) -> Path:
    """A hand-made adapter GGUF; ``tensors`` maps a name to its ggml shape (zeros)."""
    w = gguf.GGUFWriter(str(path), arch)
    if general_type is not None:
        w.add_string("general.type", general_type)
    if adapter_type is not None:
        w.add_string("adapter.type", adapter_type)
    if isinstance(alpha, float):
        w.add_float32("adapter.lora.alpha", alpha)
    elif isinstance(alpha, int):
        w.add_uint32("adapter.lora.alpha", alpha)
    for name, shape in (tensors if tensors is not None else {
            "blk.0.attn_q.weight.lora_a": (576, 4), "blk.0.attn_q.weight.lora_b": (4, 576)}).items():
        w.add_tensor(name, np.zeros(shape[::-1], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_the_tiny_lora_fits_smollm2(tmp_path: Path, smollm2_gguf: Path) -> None:
    info = check_adapter(write_tiny_lora(tmp_path / "lora.gguf"), model=smollm2_gguf)
    assert (info.arch, info.rank, info.pairs, info.alpha) == ("llama", RANK, len(SMOLLM2_TARGETS), float(RANK))
    assert info.describe() == f"a LoRA adapter (llama, rank {RANK}, {len(SMOLLM2_TARGETS)} tensor pairs, alpha 8)"


def test_a_model_is_not_an_adapter(smollm2_gguf: Path) -> None:
    with pytest.raises(MalformedInputError, match=r"is not an adapter \(general.type 'model', expected 'adapter'\)"):
        check_adapter(smollm2_gguf, label="ADAPTER x")


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"general_type": None}, "is not an adapter (general.type None, expected 'adapter')"),
    ({"adapter_type": "control_vector"}, "is not a LoRA adapter (adapter.type 'control_vector', expected 'lora')"),
    ({"adapter_type": None}, "is not a LoRA adapter (adapter.type None"),
    ({"alpha": 8}, "adapter.lora.alpha is UINT32, not FLOAT32"),
    ({"tensors": {"blk.0.attn_q.weight.lora_a": (576, 4)}}, "the LoRA pair for 'blk.0.attn_q.weight' lacks its lora_b"),
    ({"tensors": {"blk.0.attn_q.weight": (576, 576)}}, "tensor 'blk.0.attn_q.weight' is not a LoRA tensor"),
    ({"tensors": {}}, "the adapter has no LoRA tensors"),
    ({"tensors": {"blk.0.attn_q.weight.lora_a": (576, 4), "blk.0.attn_q.weight.lora_b": (8, 576)}},
     "whose ranks differ (lora_a is not transposed)"),
])
def test_what_the_loader_refuses_is_refused(tmp_path: Path, kwargs: dict, words: str) -> None:
    bad = _write(tmp_path / "bad.gguf", **kwargs)
    with pytest.raises(MalformedInputError) as e:
        check_adapter(bad, label="ADAPTER bad.gguf")
    line = str(e.value)
    assert words in line and line.startswith("ADAPTER bad.gguf") and "\n" not in line, line


def test_norm_tensors_are_skipped_as_the_loader_does(tmp_path: Path) -> None:
    ok = _write(tmp_path / "norm.gguf", tensors={
        "blk.0.attn_norm.weight": (576,),
        "blk.0.attn_q.weight.lora_a": (576, 4), "blk.0.attn_q.weight.lora_b": (4, 576)})
    assert check_adapter(ok).pairs == 1


def test_another_architecture_is_refused(tmp_path: Path, smollm2_gguf: Path) -> None:
    qwen = write_tiny_lora(tmp_path / "qwen.gguf", arch="qwen2")
    assert check_adapter(qwen).arch == "qwen2"  # a valid adapter on its own
    with pytest.raises(IncompatibleModelsError, match=r"is for architecture 'qwen2', the model is 'llama'"):
        check_adapter(qwen, model=smollm2_gguf)


def test_a_tensor_the_model_lacks_is_refused(tmp_path: Path, smollm2_gguf: Path) -> None:
    deep = write_tiny_lora(tmp_path / "deep.gguf", targets={"blk.99.attn_output.weight": (576, 576)})
    with pytest.raises(IncompatibleModelsError, match=r"LoRA tensor 'blk.99.attn_output.weight' does not exist"):
        check_adapter(deep, model=smollm2_gguf)


def test_a_shape_that_does_not_fit_is_refused(tmp_path: Path, smollm2_gguf: Path) -> None:
    wide = write_tiny_lora(tmp_path / "wide.gguf", targets={"blk.0.attn_k.weight": (576, 576)})
    with pytest.raises(IncompatibleModelsError) as e:
        check_adapter(wide, model=smollm2_gguf)
    assert "LoRA pair for 'blk.0.attn_k.weight' has shapes a [576, 8], b [8, 576], which do not fit the model's" \
           " [576, 192]" in str(e.value)
    assert isinstance(e.value, ConfigurationError)  # exit 2: a wrong pairing, not a damaged file


def test_token_embd_pairs_are_flipped_as_the_loader_reads_them(tmp_path: Path, smollm2_gguf: Path) -> None:
    """For token_embd.weight llama.cpp expects B non-transposed: W[0] == b[1] and W[1] == a[1]."""
    flipped = _write(tmp_path / "embd.gguf", tensors={
        "token_embd.weight.lora_a": (4, 49152), "token_embd.weight.lora_b": (4, 576)})
    assert check_adapter(flipped, model=smollm2_gguf).rank == 4
    straight = _write(tmp_path / "embd2.gguf", tensors={
        "token_embd.weight.lora_a": (576, 4), "token_embd.weight.lora_b": (4, 49152)})
    with pytest.raises(IncompatibleModelsError, match="which do not fit"):
        check_adapter(straight, model=smollm2_gguf)


def test_dx_verify_checks_an_adapter_file(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`dx verify lora.gguf` (before `dx create` with ADAPTER): a loadable adapter passes, a broken one is one line."""
    from test_verify_cli import dx, one_error_line

    code, _, err = dx(capsys, "verify", write_tiny_lora(tmp_path / "lora.gguf"))
    assert code == 0, err
    code, _, err = dx(capsys, "verify", _write(tmp_path / "bad.gguf", alpha=8))
    assert code == 3, err
    assert "adapter.lora.alpha is UINT32, not FLOAT32" in one_error_line(err)
