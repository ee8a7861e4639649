"""Ollama's request fields mapped onto the engine, or refused in Ollama's words (pure functions), and
what a model can do (``dx.models.capabilities``) read from real GGUF headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from dx.errors import BadRequest
from dx.models.capabilities import (
    is_generative,
    projector_for,
    read_capabilities,
    template_thinks,
)
from dx.models.source import ModelSource
from dx.server import ollama_wire as w

VOCABS = Path.home() / ".cache/dx/sources/patched-7278ea078ff39e50/models"


# ------------------------------------------------------------------ think
def test_think_on_a_model_that_does_not_reason_is_ollamas_400() -> None:
    for value in (True, "low", "medium", "high"):
        with pytest.raises(BadRequest, match=r'^"smollm2:135m" does not support thinking$'):
            w.think_fields(w.parse_think(value), False, "smollm2:135m")
    assert w.think_fields(w.parse_think(False), False, "m") == {}
    assert w.think_fields(w.parse_think(None), False, "m") == {}


def test_think_on_a_reasoning_model_switches_the_engines_reasoning() -> None:
    on = w.think_fields(True, True, "m")
    assert on == {"reasoning_format": "deepseek", "chat_template_kwargs": {"enable_thinking": True}}
    off = w.think_fields(False, True, "m")
    assert off["chat_template_kwargs"] == {"enable_thinking": False}
    high = w.think_fields("high", True, "m")
    assert high["reasoning_effort"] == "high" and high["chat_template_kwargs"]["enable_thinking"] is True
    assert w.think_fields(None, True, "m") == {"reasoning_format": "deepseek"}


@pytest.mark.parametrize("bad", ["yes", "max", 1, [], {}])
def test_think_junk_is_400(bad: object) -> None:
    with pytest.raises(BadRequest, match="think must be"):
        w.parse_think(bad)


# ------------------------------------------------------------------ logprobs
def test_logprobs_request_checks_like_ollama() -> None:
    assert w.logprob_request({}) == (False, 0)
    assert w.logprob_request({"logprobs": True, "top_logprobs": 3}) == (True, 3)
    for bad in (-1, 21):
        with pytest.raises(BadRequest, match=r"^top_logprobs must be between 0 and 20$"):
            w.logprob_request({"logprobs": True, "top_logprobs": bad})
    with pytest.raises(BadRequest):
        w.logprob_request({"logprobs": "yes"})


def test_logprob_fields_per_engine_route() -> None:
    assert w.logprob_fields(True, 2, "/v1/chat/completions") == {"logprobs": True, "top_logprobs": 2}
    assert w.logprob_fields(True, 0, "/v1/chat/completions") == {"logprobs": True, "top_logprobs": 1}
    assert w.logprob_fields(True, 0, "/v1/completions") == {"n_probs": 1}
    assert w.logprob_fields(True, 5, "/infill") == {"n_probs": 5}
    assert w.logprob_fields(False, 5, "/infill") == {}


def test_logprobs_to_ollamas_shape() -> None:
    engine = [{"id": 5, "token": "Hi", "bytes": [72, 105], "logprob": -0.5,
               "top_logprobs": [{"id": 5, "token": "Hi", "bytes": [72, 105], "logprob": -0.5},
                                {"id": 6, "token": "Yo", "bytes": [89, 111], "logprob": -1.5}]}]
    assert w.logprobs_to_ollama(engine, True) == [
        {"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
         "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
                          {"token": "Yo", "logprob": -1.5, "bytes": [89, 111]}]}]
    assert "top_logprobs" not in w.logprobs_to_ollama(engine, False)[0]
    assert w.engine_logprobs({"choices": [{"logprobs": {"content": engine}}]}) == engine
    assert w.engine_logprobs({"completion_probabilities": engine}) == engine
    assert w.engine_logprobs({"choices": [{"logprobs": None}]}) is None


# ------------------------------------------------------------------ shift, truncate, keep_alive, format
def test_shift_false_is_what_dx_does_true_is_refused() -> None:
    w.check_shift({})
    w.check_shift({"shift": False})
    with pytest.raises(BadRequest, match="shift is not supported by dx"):
        w.check_shift({"shift": True})
    with pytest.raises(BadRequest, match="shift must be true or false"):
        w.check_shift({"shift": "yes"})


def test_truncate_is_a_boolean_default_true() -> None:
    assert w.check_truncate({}) is True
    assert w.check_truncate({"truncate": False}) is False
    with pytest.raises(BadRequest):
        w.check_truncate({"truncate": "no"})


def test_empty_format_is_no_format() -> None:  # llama-index sends format: ""
    assert w.map_format("") == {}
    _path, body, _ = w.generate_request({"prompt": "hi", "format": ""})
    assert "response_format" not in body


@pytest.mark.parametrize("value,seconds", [(0, 0.0), (-1, None), ("-1m", None), ("5m", 300.0), (30, 30.0),
                                           ("1h30m", 5400.0), ("0", 0.0)])
def test_keep_alive_forms(value: object, seconds: float | None) -> None:
    from dx.engine.keep_alive import parse_keep_alive

    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("junk", ["soon", "5 minutes", True, [], {}])
def test_keep_alive_junk_raises(junk: object) -> None:
    from dx.engine.keep_alive import parse_keep_alive

    with pytest.raises(ValueError):
        parse_keep_alive(junk)


def test_embed_dimensions() -> None:
    assert w.embed_dimensions({}) == 0
    assert w.embed_dimensions({"dimensions": 2}) == 2
    with pytest.raises(BadRequest):
        w.embed_dimensions({"dimensions": -1})
    assert w.shorten_vector([3.0, 4.0, 5.0], 2) == [0.6, 0.8]
    assert w.shorten_vector([1.0], 4) == [1.0]


# ------------------------------------------------------------------ images, suffix
def test_images_go_to_the_engine_as_image_parts() -> None:
    body, _ = w.chat_request({"messages": [{"role": "user", "content": "what is it", "images": ["QUJD"]}]})
    parts = body["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "what is it"}
    assert parts[1]["image_url"]["url"] == "data:image/png;base64,QUJD"
    assert w.message_images({"messages": [{"role": "user", "images": ["x"]}]})
    assert not w.message_images({"messages": [{"role": "user", "content": "x"}]})
    path, gen, _ = w.generate_request({"prompt": "what is it", "images": ["QUJD"]})
    assert path == "/v1/chat/completions" and gen["messages"][-1]["content"][1]["type"] == "image_url"
    with pytest.raises(BadRequest, match="raw"):
        w.generate_request({"prompt": "x", "images": ["QUJD"], "raw": True})
    with pytest.raises(BadRequest, match="images must be"):
        w.generate_request({"prompt": "x", "images": "QUJD"})


def test_unsupported_words() -> None:
    assert str(w.unsupported("smollm2:135m", "images")) == '"smollm2:135m" does not support images'
    assert w.unsupported("m", "insert").http_status == 400


def test_suffix_becomes_an_infill_request() -> None:
    body, load = w.infill_request({"prompt": "def f(", "suffix": "    return x\n", "stream": False,
                                      "options": {"num_predict": 5, "num_ctx": 512}, "format": "json"})
    assert body["input_prefix"] == "def f(" and body["input_suffix"] == "    return x\n"
    assert body["max_tokens"] == 5 and body["stream"] is False and load is not None and load.ctx == 512
    assert body["json_schema"] == {}
    choice, usage = w.infill_choice({"content": "x)", "stop": True, "stop_type": "limit",
                                     "tokens_predicted": 2, "tokens_evaluated": 9})
    assert choice == {"text": "x)", "finish_reason": "length"}
    assert usage == {"prompt_tokens": 9, "completion_tokens": 2}
    assert w.infill_choice({"content": "y", "stop": False})[0]["finish_reason"] is None


def test_generate_fields_dx_cannot_honour_are_400() -> None:
    with pytest.raises(BadRequest, match="template is not supported by dx"):
        w.generate_request({"prompt": "x", "template": "{{ .Prompt }}"})
    with pytest.raises(BadRequest, match="context is not supported by dx"):
        w.generate_request({"prompt": "x", "context": [1, 2, 3]})
    with pytest.raises(BadRequest, match="context is not supported by dx"):
        w.infill_request({"prompt": "x", "suffix": "y", "context": [1]})
    with pytest.raises(BadRequest, match=r"^raw mode does not support template, system, or context$"):
        w.generate_request({"prompt": "x", "system": "be brief", "raw": True})
    w.generate_request({"prompt": "x", "template": "", "context": []})  # empty: nothing asked


def test_an_earlier_turns_thinking_goes_back_to_the_template() -> None:
    body, _ = w.chat_request({"messages": [{"role": "user", "content": "q"},
                                           {"role": "assistant", "content": "a", "thinking": "hmm"}]})
    assert body["messages"][1]["reasoning_content"] == "hmm"
    assert "reasoning_content" not in body["messages"][0]


# ------------------------------------------------------------------ /api/show text
def test_show_parameters_and_modelfile_read_like_ollamas() -> None:
    params = {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.2, "num_ctx": 4096}
    text = w.show_parameters(params)
    lines = text.splitlines()
    assert lines[0].split() == ["num_ctx", "4096"]
    assert lines[1].split(None, 1) == ["stop", '"<|im_start|>"']
    assert lines[3].split() == ["temperature", "0.2"]
    mf = w.show_modelfile("smollm2:135m", "{{ .Prompt }}", params, "Be brief.")
    assert "\nFROM smollm2:135m\n" in mf and 'TEMPLATE """{{ .Prompt }}"""' in mf
    assert 'PARAMETER stop "<|im_end|>"' in mf and 'SYSTEM """Be brief."""' in mf
    assert "/" not in mf.split("FROM ", 2)[2].splitlines()[0]


def test_fim_template_has_ollamas_suffix_section() -> None:
    t = w.fim_template("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
    assert ".Suffix" in t and t.startswith("{{- if .Suffix }}<fim_prefix>{{ .Prompt }}<fim_suffix>")


# ------------------------------------------------------------------ capabilities
def test_smollm2_completes_calls_tools_embeds_but_has_no_fim_vision_or_thinking(smollm2_gguf: Path) -> None:
    caps = read_capabilities(smollm2_gguf)
    assert caps.names() == ["completion", "tools", "embedding"]
    assert caps.fim is None  # its vocabulary has no <fim_prefix>/<|fim_prefix|>: llama-server's /infill refuses it


@pytest.mark.parametrize("vocab,prefix", [("ggml-vocab-starcoder.gguf", "<fim_prefix>"),
                                          ("ggml-vocab-deepseek-coder.gguf", "<｜fim▁begin｜>")])
def test_fim_tokens_found_in_the_vocabulary_as_llama_cpp_does(vocab: str, prefix: str) -> None:
    path = VOCABS / vocab
    if not path.is_file():
        pytest.skip("the pinned engine source is not unpacked here")
    caps = read_capabilities(path)
    assert caps.insert and caps.fim is not None and caps.fim.prefix == prefix
    assert "insert" in caps.names()


def test_an_encoder_model_does_not_complete() -> None:
    path = VOCABS / "ggml-vocab-bert-bge.gguf"
    if not path.is_file():
        pytest.skip("the pinned engine source is not unpacked here")
    assert read_capabilities(path).names() == ["embedding"]
    assert not is_generative("llama", 1, None)  # a pooling type: an embedding model (Ollama's rule)
    assert is_generative("llama", None, None)


@pytest.mark.parametrize("template,thinks", [
    ("{% if x %}<think>{{ r }}</think>{% endif %}", True),
    ("{{ content.split('</think>')[-1] }}", True),
    ("{% if enable_thinking %}x{% endif %}", True),
    ("{{ message.reasoning_content }}", True),
    ("<|im_start|>{{ message['content'] }}<|im_end|>", False),
    ("", False),
])
def test_template_thinks(template: str, thinks: bool) -> None:
    assert template_thinks(template) is thinks


def test_projector_beside_a_gguf_and_the_engine_gets_mmproj(tmp_path: Path, smollm2_gguf: Path) -> None:
    from dx.engine.process import mmproj_args

    model = tmp_path / "smolvlm-256m.gguf"
    model.symlink_to(smollm2_gguf)
    source = ModelSource(path=model, name="smolvlm")
    assert projector_for(source) is None and mmproj_args(source) == []
    proj = tmp_path / "mmproj-smolvlm-256m-f16.gguf"
    proj.write_bytes(b"GGUF")
    assert projector_for(source) == proj
    assert mmproj_args(source) == ["--mmproj", str(proj)]
    assert projector_for(ModelSource(path=proj)) is None  # a projector is not a model with a projector
    assert projector_for(ModelSource(path=model, offset=65536, length=10)) is None  # at an offset but no trailer: no projector entry
    caps = read_capabilities(model, projector=proj)
    assert "vision" in caps.names()


def test_projector_layer_of_ollamas_store(tmp_path: Path, smollm2_gguf: Path) -> None:
    import hashlib
    import json

    models = tmp_path / "ollama" / "models"
    blobs = models / "blobs"
    blobs.mkdir(parents=True)
    data = smollm2_gguf.read_bytes()
    model_hex = hashlib.sha256(data).hexdigest()
    (blobs / f"sha256-{model_hex}").write_bytes(data)
    proj = b"GGUF-projector"
    proj_hex = hashlib.sha256(proj).hexdigest()
    (blobs / f"sha256-{proj_hex}").write_bytes(proj)
    cfg = b"{}"
    cfg_hex = hashlib.sha256(cfg).hexdigest()
    (blobs / f"sha256-{cfg_hex}").write_bytes(cfg)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": f"sha256:{cfg_hex}", "size": len(cfg)},
                "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{model_hex}",
                            "size": len(data)},
                           {"mediaType": "application/vnd.ollama.image.projector", "digest": f"sha256:{proj_hex}",
                            "size": len(proj)}]}
    mdir = models / "manifests" / "registry.ollama.ai" / "library" / "vis"
    mdir.mkdir(parents=True)
    (mdir / "latest").write_text(json.dumps(manifest))
    found = projector_for(ModelSource(path=blobs / f"sha256-{model_hex}", name="vis:latest"))
    assert found == blobs / f"sha256-{proj_hex}"


def test_mmproj_is_a_flag_of_the_pinned_engine(cpu_engine: Path) -> None:
    import subprocess

    helptext = subprocess.run([str(cpu_engine / "bin" / "llama-server"), "--help"], capture_output=True, text=True,
                              timeout=60).stdout
    assert "--mmproj FILE" in helptext
