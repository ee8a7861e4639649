"""The tiny random LoRA (support.tiny_lora) against the real llama-server and SmolLM2: it loads, it changes the
greedy answer, and at scale 0 the answer is the bare model's — so a different answer through DX means the
adapter reached the model, not that something else changed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.engine_run import chat, serve
from support.tiny_lora import write_tiny_lora

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def answers(cpu_engine: Path, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("lora-engine")
    lora = write_tiny_lora(tmp / "tiny-lora.gguf")
    got = {}
    for kind, extra in (("bare", []), ("lora", ["--lora", str(lora)]), ("zero", ["--lora-scaled", f"{lora}:0"])):
        log = tmp / f"{kind}.log"
        argv = [str(cpu_engine / "bin" / "llama-server"), "-m", str(smollm2_gguf), "-c", "1024", "-np", "1", *extra]
        with serve(argv, log, ready_s=120) as (_proc, url):
            got[kind] = chat(url, QUESTION, max_tokens=24)
        got[f"{kind}-log"] = log.read_text(errors="replace")
    yield got


def test_the_random_lora_changes_the_greedy_answer(answers: dict) -> None:
    assert answers["lora"] != answers["bare"], answers
    assert "failed to apply lora adapter" not in answers["lora-log"]


def test_at_scale_zero_the_answer_is_the_bare_models(answers: dict) -> None:
    assert answers["zero"] == answers["bare"], answers
