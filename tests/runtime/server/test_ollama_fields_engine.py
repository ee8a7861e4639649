"""Ollama's request fields against `dx serve` with auth on, the real engine and SmolLM2: each honoured, or
refused with Ollama's 400 words; /api/show, /api/tags and /api/ps carry Ollama's fields and the truth
about what SmolLM2 can do (complete, call tools, embed; no thinking, insert or vision)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from support.serve_harness import DXServer, engine_binary, start_dx

pytestmark = pytest.mark.integration

MODEL = "smollm2:135m"
FIM_MODEL = "smol-fim:latest"      # SmolLM2 whose metadata names three of its control tokens as FIM tokens
THINK_MODEL = "smol-think:latest"  # SmolLM2 with a Qwen3-style chat template that opens <think>
ENCODER_MODEL = "bge-vocab:latest"
BGE_VOCAB = Path.home() / ".cache/dx/sources/patched-7278ea078ff39e50/models/ggml-vocab-bert-bge.gguf"
FAST = {"num_predict": 6, "temperature": 0, "seed": 7}
MSGS = [{"role": "user", "content": "Say hello."}]

THINK_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}{{- '<|im_start|>assistant\n' }}"
    "{%- if message.reasoning_content %}{{- '<think>\n' + message.reasoning_content + '\n</think>\n\n' }}"
    "{%- endif %}{{- message.content + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}"
    "{%- else %}{{- '<think>\n' }}{%- endif %}{%- endif %}"
)


def _with_metadata(src: Path, dst: Path, extra: dict[str, int | str]) -> Path:
    """A copy of the GGUF ``src`` with metadata keys set (ints as UINT32, str as STRING), tensors unchanged."""
    from dxverify.gguf import read_gguf

    def record(key: str, value: int | str) -> bytes:
        k = key.encode()
        head = struct.pack("<Q", len(k)) + k
        if isinstance(value, int):
            return head + struct.pack("<II", 4, value)
        v = value.encode()
        return head + struct.pack("<IQ", 8, len(v)) + v

    data = src.read_bytes()
    with read_gguf(src) as g:
        recs = sorted(g.kv.values(), key=lambda kv: kv.offset)
        ends = [r.offset for r in recs[1:]] + [g.tensors[0].info_offset]
        kept = [data[r.offset:e] for r, e in zip(recs, ends, strict=True) if r.key not in extra]
        infos = data[g.tensors[0].info_offset:g.header_size]
        body = data[g.data_offset:g.data_offset + g.data_size]
        version, n_tensors, align = g.version, len(g.tensors), g.alignment
    head = b"GGUF" + struct.pack("<IQQ", version, n_tensors, len(kept) + len(extra)) + b"".join(kept)
    head += b"".join(record(k, v) for k, v in extra.items()) + infos
    dst.write_bytes(head + b"\0" * (-len(head) % align) + body)
    return dst


@pytest.fixture(scope="module")
def dx(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from dx.models.catalog import Store

    engine = engine_binary(request)
    tmp = tmp_path_factory.mktemp("fields")
    store = Store(root=tmp / "home", ollama_dir=False)
    store.import_file(smollm2_gguf, MODEL)
    fim = {"tokenizer.ggml.fim_pre_token_id": 11, "tokenizer.ggml.fim_suf_token_id": 12,
           "tokenizer.ggml.fim_mid_token_id": 13}  # <jupyter_start>, <jupyter_text>, <jupyter_code>: control tokens
    store.import_file(_with_metadata(smollm2_gguf, tmp / "smol-fim.gguf", fim), FIM_MODEL)
    think = {"tokenizer.chat_template": THINK_TEMPLATE}
    store.import_file(_with_metadata(smollm2_gguf, tmp / "smol-think.gguf", think), THINK_MODEL)
    if BGE_VOCAB.is_file():  # llama.cpp's BERT vocabulary file: an encoder's header, no weights
        store.import_file(BGE_VOCAB, ENCODER_MODEL)
    server = start_dx(tmp, "--ctx", "512", engine=engine, model=MODEL)
    assert server.api_key  # auth on
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(dx: DXServer):  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=dx.url, headers=dx.headers, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def oll(dx: DXServer) -> ollama.Client:
    return dx.ollama(timeout=120)


def _post(http: httpx.Client, path: str, **doc: Any) -> httpx.Response:
    return http.post(path, json={"model": MODEL, **doc})


def _error(r: httpx.Response, status: int = 400) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert set(r.json()) == {"error"}, r.text
    return r.json()["error"]


def _lines(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


# ------------------------------------------------------------------ think
def test_think_is_ollamas_400_on_a_model_that_does_not_reason(http: httpx.Client, oll: ollama.Client) -> None:
    for think in (True, "high"):
        assert _error(_post(http, "/api/chat", messages=MSGS, think=think, stream=False)) == \
            f'"{MODEL}" does not support thinking'
        assert _error(_post(http, "/api/generate", prompt="hi", think=think, stream=False)) == \
            f'"{MODEL}" does not support thinking'
    with pytest.raises(ollama.ResponseError) as exc:
        oll.chat(MODEL, messages=MSGS, think=True, options=FAST)
    assert exc.value.status_code == 400 and "does not support thinking" in exc.value.error
    r = _post(http, "/api/chat", messages=MSGS, think=False, stream=False, options=FAST)
    assert r.status_code == 200 and r.json()["message"]["content"] and "thinking" not in r.json()["message"]
    assert _error(_post(http, "/api/chat", messages=MSGS, think="maybe")).startswith("think must be")


# ------------------------------------------------------------------ suffix
def test_suffix_on_a_model_without_fim_tokens_is_ollamas_400(http: httpx.Client, oll: ollama.Client) -> None:
    r = _post(http, "/api/generate", prompt="def add(a, b):\n", suffix="\n    return c\n", stream=False,
              options=FAST)
    assert _error(r) == f'"{MODEL}" does not support insert'
    with pytest.raises(ollama.ResponseError) as exc:
        oll.generate(MODEL, prompt="x = ", suffix="\n", options=FAST)
    assert exc.value.status_code == 400


# ------------------------------------------------------------------ images
def test_images_on_a_text_only_model_are_400_not_500(http: httpx.Client, oll: ollama.Client) -> None:
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    msgs = [{"role": "user", "content": "What is in this picture?", "images": [png]}]
    for stream in (False, True):
        assert _error(_post(http, "/api/chat", messages=msgs, stream=stream)) == \
            f'"{MODEL}" does not support images'
        assert _error(_post(http, "/api/generate", prompt="What is this?", images=[png], stream=stream)) == \
            f'"{MODEL}" does not support images'
    with pytest.raises(ollama.ResponseError) as exc:
        oll.chat(MODEL, messages=msgs)
    assert exc.value.status_code == 400
    # OpenAI's shape of the same mistake: the engine's 500 (its mmproj hint) is the client's 400 through DX
    parts = [{"type": "text", "text": "What is this?"},
             {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]
    for stream in (False, True):
        r = _post(http, "/v1/chat/completions", model=MODEL, messages=[{"role": "user", "content": parts}],
                  stream=stream, max_tokens=4)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and "image input is not supported" in err["message"]
        assert "vision" in err["message"] and "hint" not in err["message"]


# ------------------------------------------------------------------ logprobs
def _check_logprobs(items: list[dict[str, Any]], top: int) -> None:
    assert items, "no logprobs"
    for item in items:
        assert isinstance(item["token"], str) and isinstance(item["logprob"], float) and item["logprob"] <= 0
        assert isinstance(item["bytes"], list)
        if top:
            assert 1 <= len(item["top_logprobs"]) <= top
            assert all(set(t) >= {"token", "logprob"} for t in item["top_logprobs"])
        else:
            assert "top_logprobs" not in item


def test_logprobs_come_back_in_ollamas_shape(http: httpx.Client, oll: ollama.Client) -> None:
    r = _post(http, "/api/chat", messages=MSGS, stream=False, options=FAST, logprobs=True, top_logprobs=3)
    assert r.status_code == 200, r.text
    _check_logprobs(r.json()["logprobs"], 3)
    assert len(r.json()["logprobs"]) == r.json()["eval_count"]
    r = _post(http, "/api/generate", prompt="hello", stream=False, options=FAST, logprobs=True)
    _check_logprobs(r.json()["logprobs"], 0)
    r = _post(http, "/api/generate", prompt="hello", raw=True, stream=False, options=FAST, logprobs=True,
              top_logprobs=2)
    _check_logprobs(r.json()["logprobs"], 2)
    chunks = _lines(_post(http, "/api/chat", messages=MSGS, stream=True, options=FAST, logprobs=True,
                          top_logprobs=2))
    streamed = [item for c in chunks if not c["done"] for item in c.get("logprobs", [])]
    _check_logprobs(streamed, 2)
    chunks = _lines(_post(http, "/api/generate", prompt="hello", stream=True, options=FAST, logprobs=True))
    _check_logprobs([item for c in chunks for item in c.get("logprobs", [])], 0)
    plain = _post(http, "/api/chat", messages=MSGS, stream=False, options=FAST)
    assert "logprobs" not in plain.json()
    assert _error(_post(http, "/api/chat", messages=MSGS, logprobs=True, top_logprobs=21)) == \
        "top_logprobs must be between 0 and 20"
    answer = oll.chat(MODEL, messages=MSGS, options=FAST, logprobs=True, top_logprobs=2)
    assert answer.logprobs and answer.logprobs[0].top_logprobs


# ------------------------------------------------------------------ truncate, shift, format, keep_alive
def test_embed_truncate(http: httpx.Client) -> None:
    long_text = "the quick brown fox jumps over the lazy dog " * 200  # ~2000 tokens, context 512
    assert _error(_post(http, "/api/embed", input=long_text, truncate=False)) == \
        "the input length exceeds the context length"
    for doc in ({}, {"truncate": True}):
        r = _post(http, "/api/embed", input=[long_text, "short"], **doc)
        assert r.status_code == 200, r.text
        assert len(r.json()["embeddings"]) == 2 and len(r.json()["embeddings"][0]) == 576
    r = _post(http, "/api/embed", input="short", truncate=False, dimensions=64)
    vec = r.json()["embeddings"][0]
    assert len(vec) == 64 and abs(sum(x * x for x in vec) - 1.0) < 1e-3


def test_shift_and_truncate_on_chat(http: httpx.Client) -> None:
    assert "shift is not supported by dx" in _error(_post(http, "/api/chat", messages=MSGS, shift=True))
    r = _post(http, "/api/chat", messages=MSGS, shift=False, truncate=False, stream=False, options=FAST)
    assert r.status_code == 200, r.text
    assert _error(_post(http, "/api/generate", prompt="x", truncate="no")) == "truncate must be true or false"


def test_generate_fields_dx_cannot_honour_are_400(http: httpx.Client) -> None:
    assert "template is not supported by dx" in _error(_post(http, "/api/generate", prompt="x", template="{{ .P }}"))
    assert "context is not supported by dx" in _error(_post(http, "/api/generate", prompt="x", context=[1, 2]))
    assert _error(_post(http, "/api/generate", prompt="x", raw=True, system="s")) == \
        "raw mode does not support template, system, or context"


def test_an_encoder_model_does_not_chat_or_generate(http: httpx.Client) -> None:
    if not BGE_VOCAB.is_file():
        pytest.skip("the pinned engine source is not unpacked here")
    assert _error(_post(http, "/api/chat", model=ENCODER_MODEL, messages=MSGS)) == \
        f'"{ENCODER_MODEL}" does not support chat'
    assert _error(_post(http, "/api/generate", model=ENCODER_MODEL, prompt="hi")) == \
        f'"{ENCODER_MODEL}" does not support generate'
    assert _post(http, "/api/show", model=ENCODER_MODEL).json()["capabilities"] == ["embedding"]


def test_empty_format_is_no_format(http: httpx.Client) -> None:  # llama-index sends format: ""
    r = _post(http, "/api/generate", prompt="Say hi.", format="", stream=False, options=FAST)
    assert r.status_code == 200 and r.json()["response"]


@pytest.mark.parametrize("keep_alive", [30, "5m", "1h30m", -1, "-1m", "-1"])
def test_keep_alive_forms_are_accepted(http: httpx.Client, keep_alive: object) -> None:
    r = _post(http, "/api/chat", messages=MSGS, keep_alive=keep_alive, stream=False, options=FAST)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("keep_alive", ["soon", "5 minutes", True, [1]])
def test_keep_alive_junk_is_400(http: httpx.Client, keep_alive: object) -> None:
    for path, doc in (("/api/chat", {"messages": MSGS}), ("/api/generate", {"prompt": "hi"}),
                      ("/api/embed", {"input": "hi"})):
        assert "keep_alive" in _error(_post(http, path, keep_alive=keep_alive, **doc)), path


# ------------------------------------------------------------------ show, tags, ps
def test_show_carries_ollamas_fields(http: httpx.Client, oll: ollama.Client, dx: DXServer) -> None:
    r = _post(http, "/api/show")
    assert r.status_code == 200, r.text
    shown = r.json()
    assert shown["capabilities"] == ["completion", "tools", "embedding"]
    info = shown["model_info"]
    assert info["general.architecture"] == "llama"
    assert info["llama.context_length"] == 8192 and info["llama.embedding_length"] == 576
    assert isinstance(info["general.parameter_count"], int) and info["general.parameter_count"] > 100_000_000
    assert "general.basename" in info
    assert info["tokenizer.ggml.tokens"] is None  # big tables are null unless verbose
    assert "tokenizer.chat_template" not in info
    assert "<|im_start|>" in shown["template"]
    assert shown["modelfile"].splitlines()[4] == f"FROM {MODEL}"
    assert str(dx.home) not in shown["modelfile"] and "/" not in shown["modelfile"].split("FROM ")[2].split()[0]
    assert shown["modified_at"].endswith("Z") and shown["details"]["family"] == "llama"
    assert isinstance(shown["parameters"], str)
    verbose = _post(http, "/api/show", verbose=True).json()["model_info"]
    assert len(verbose["tokenizer.ggml.tokens"]) == 49152
    client = oll.show(MODEL)
    assert client.capabilities == ["completion", "tools", "embedding"] and client.modelinfo


def test_tags_and_ps_carry_every_field_ollama_sends(http: httpx.Client) -> None:
    _post(http, "/api/generate", prompt="hi", stream=False, options=FAST)
    tags = http.get("/api/tags").json()["models"]
    entry = next(m for m in tags if m["name"] == MODEL)
    assert set(entry) >= {"name", "model", "modified_at", "size", "digest", "details", "capabilities"}
    assert entry["capabilities"] == ["completion", "tools", "embedding"]
    running = http.get("/api/ps").json()["models"]
    entry = next(m for m in running if m["name"] == MODEL)
    assert set(entry) >= {"name", "model", "size", "digest", "details", "expires_at", "size_vram",
                          "context_length", "capabilities"}
    assert entry["context_length"] == 512 and entry["capabilities"] == ["completion", "tools", "embedding"]


# ------------------------------------------------------------------ a model with FIM tokens, one that reasons
def test_suffix_fills_in_the_middle_through_the_engines_infill(http: httpx.Client) -> None:
    prompt, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    r = _post(http, "/api/generate", model=FIM_MODEL, prompt=prompt, suffix=suffix, stream=False, options=FAST)
    assert r.status_code == 200, r.text
    filled = r.json()
    assert filled["done"] is True and filled["done_reason"] in ("stop", "length")
    assert filled["eval_count"] > 0 and filled["prompt_eval_count"] > 0 and filled["total_duration"] > 0
    plain = _post(http, "/api/generate", model=FIM_MODEL, prompt=prompt, stream=False, options=FAST).json()
    assert filled["response"] != plain["response"]
    chunks = _lines(_post(http, "/api/generate", model=FIM_MODEL, prompt=prompt, suffix=suffix, stream=True,
                          options=FAST, logprobs=True))
    assert chunks[-1]["done"] is True and chunks[-1]["eval_count"] == filled["eval_count"]
    assert "".join(c["response"] for c in chunks) == filled["response"]
    _check_logprobs([item for c in chunks for item in c.get("logprobs", [])], 0)
    shown = _post(http, "/api/show", model=FIM_MODEL).json()
    assert "insert" in shown["capabilities"]
    assert "{{ .Suffix }}" in shown["template"] and "<jupyter_start>{{ .Prompt }}" in shown["template"]


def test_think_brings_the_reasoning_back_as_thinking(http: httpx.Client, oll: ollama.Client) -> None:
    shown = _post(http, "/api/show", model=THINK_MODEL).json()
    assert "thinking" in shown["capabilities"]
    opts = {**FAST, "num_predict": 8}
    r = _post(http, "/api/chat", model=THINK_MODEL, messages=MSGS, think=True, stream=False, options=opts)
    assert r.status_code == 200, r.text
    assert r.json()["message"]["thinking"]  # the template opened <think>: what SmolLM2 says is its reasoning
    r = _post(http, "/api/chat", model=THINK_MODEL, messages=MSGS, think=False, stream=False, options=opts)
    assert r.status_code == 200 and r.json()["message"]["content"] and "thinking" not in r.json()["message"]
    r = _post(http, "/api/generate", model=THINK_MODEL, prompt="Say hello.", think="high", stream=False,
              options=opts)
    assert r.status_code == 200 and r.json()["thinking"], r.text
    chunks = _lines(_post(http, "/api/chat", model=THINK_MODEL, messages=MSGS, think=True, stream=True,
                          options=opts))
    assert "".join(c["message"].get("thinking", "") for c in chunks)
    chunks = _lines(_post(http, "/api/generate", model=THINK_MODEL, prompt="Say hello.", think=True, stream=True,
                          options=opts))
    assert "".join(c.get("thinking", "") for c in chunks)
    answer = oll.chat(THINK_MODEL, messages=MSGS, think=True, options=opts)
    assert answer.message.thinking
