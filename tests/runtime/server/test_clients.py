"""The real `openai` and `ollama` Python clients, and curl, against `dx serve` with the real engine
and the real SmolLM2 model. One server for the whole module (the engine starts once)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from support.serve_harness import DXServer, engine_binary, start_dx
from support.tools import need

pytestmark = pytest.mark.integration

MODEL = "smollm2:135m"
SMOLLM2_EMBEDDING_LENGTH = 576
FAST = {"num_predict": 8, "temperature": 0, "seed": 7}


@pytest.fixture(scope="module")
def dx(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from dx.models.catalog import Store

    engine = engine_binary(request)
    tmp = tmp_path_factory.mktemp("clients")
    Store(root=tmp / "home", ollama_dir=False).import_file(smollm2_gguf, MODEL)
    server = start_dx(tmp, "--ctx", "2048", engine=engine, model=MODEL)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oai(dx: DXServer) -> openai.OpenAI:
    return dx.openai(timeout=120)


@pytest.fixture(scope="module")
def oll(dx: DXServer) -> ollama.Client:
    return dx.ollama(timeout=120)


# ------------------------------------------------------------------ openai
def test_openai_chat(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
    )
    assert r.choices[0].message.content
    assert r.usage is not None and 0 < r.usage.completion_tokens <= 8
    assert r.choices[0].finish_reason in ("stop", "length")


def test_openai_chat_stream(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to five."}], max_tokens=12, temperature=0,
        stream=True,
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2  # streamed token by token, not one blob
    assert "".join(pieces).strip()


def test_openai_completions(oai: openai.OpenAI) -> None:
    r = oai.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0)
    assert r.choices[0].text
    assert r.usage is not None and r.usage.completion_tokens == 6


def test_openai_embeddings(oai: openai.OpenAI) -> None:
    r = oai.embeddings.create(model=MODEL, input=["the cat sat", "stock markets fell"])
    assert [len(d.embedding) for d in r.data] == [SMOLLM2_EMBEDDING_LENGTH] * 2
    assert r.data[0].embedding != r.data[1].embedding


def test_openai_responses_api_is_routed_by_model(oai: openai.OpenAI) -> None:
    """/v1/responses (llama-server's own) goes to the engine of the body's model, like chat completions."""
    r = oai.responses.create(model=MODEL, input="Say hello.", max_output_tokens=8, temperature=0)
    assert r.output_text.strip()
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="no-such-model", input="Hi", max_output_tokens=2)


def test_openai_models(oai: openai.OpenAI) -> None:
    oai.completions.create(model=MODEL, prompt="Hi", max_tokens=1)  # the engine is loaded
    models = {m.id: m for m in oai.models.list()}
    assert MODEL in models
    # the loaded model carries what llama-server itself reports of it, passed through
    meta = (models[MODEL].model_extra or {}).get("meta") or {}
    assert meta.get("n_params", 0) > 100_000_000 and meta.get("n_vocab") == 49152, meta


def test_openai_models_retrieve(oai: openai.OpenAI, oll: ollama.Client) -> None:
    m = oai.models.retrieve(MODEL)
    assert (m.id, m.object, m.owned_by) == (MODEL, "model", "dx") and m.created > 0
    oll.copy(MODEL, "hf.co/owner/repo:file-q4_1")  # a Hub-style name: '/' and ':' in the id
    try:
        assert oai.models.retrieve("hf.co/owner/repo:file-q4_1").id == "hf.co/owner/repo:file-q4_1"
    finally:
        oll.delete("hf.co/owner/repo:file-q4_1")
    with pytest.raises(openai.NotFoundError) as err:
        oai.models.retrieve("nosuch:1b")
    assert err.value.code == "model_not_found"


def test_openai_errors_come_as_api_errors(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="nosuch:1b", messages=[{"role": "user", "content": "x"}])
    bad = openai.OpenAI(base_url=oai.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


# ------------------------------------------------------------------ ollama
def test_ollama_chat(oll: ollama.Client) -> None:
    r = oll.chat(model=MODEL, messages=[{"role": "user", "content": "Say hello."}], options=FAST)
    assert r.message.role == "assistant" and r.message.content
    assert r.done and r.done_reason in ("stop", "length")
    assert 0 < (r.eval_count or 0) <= 8
    assert (r.prompt_eval_count or 0) > 0
    assert (r.eval_duration or 0) > 0 and (r.total_duration or 0) >= (r.eval_duration or 0)


def test_ollama_chat_stream(oll: ollama.Client) -> None:
    parts = list(oll.chat(model=MODEL, messages=[{"role": "user", "content": "Count to five."}],
                          options={**FAST, "num_predict": 12}, stream=True))
    assert len(parts) >= 3
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content or "" for p in parts).strip()
    assert parts[-1].eval_count and parts[-1].eval_count <= 12


def test_ollama_generate(oll: ollama.Client) -> None:
    r = oll.generate(model=MODEL, prompt="Why is the sky blue?", options=FAST)
    assert r.response and r.done
    assert r.done_reason == "length" and r.eval_count == 8


def test_ollama_generate_stream_and_raw(oll: ollama.Client) -> None:
    parts = list(oll.generate(model=MODEL, prompt="Once upon a time", raw=True, options=FAST, stream=True))
    assert parts[-1].done and parts[-1].eval_count == 8
    assert "".join(p.response for p in parts).strip()


def test_ollama_options_reach_the_engine(oll: ollama.Client) -> None:
    opts = {"num_predict": 16, "temperature": 0.9, "seed": 1234, "top_k": 40}
    a = oll.generate(model=MODEL, prompt="Write a word.", options=opts).response
    b = oll.generate(model=MODEL, prompt="Write a word.", options=opts).response
    assert a == b  # same seed, same sampling: same text
    short = oll.generate(model=MODEL, prompt="Tell a long story.", options={"num_predict": 3})
    assert short.eval_count == 3
    stopped = oll.generate(model=MODEL, prompt="List: 1, 2, 3, 4, 5, 6, 7", raw=True,
                           options={"num_predict": 30, "temperature": 0, "stop": [","]})
    assert "," not in stopped.response


def test_ollama_list_show_ps(oll: ollama.Client) -> None:
    names = [m.model for m in oll.list().models]
    assert MODEL in names
    shown = oll.show(MODEL)
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.modelinfo is not None and shown.modelinfo.get("general.architecture") == "llama"
    assert shown.template and "im_start" in shown.template
    oll.generate(model=MODEL, prompt="hi", options={"num_predict": 1})
    running = [m.model for m in oll.ps().models]
    assert MODEL in running


def test_ollama_list_and_show_details_are_the_models(oll: ollama.Client) -> None:
    oll.copy(MODEL, "smol-details:v1")  # the default model and a store model
    try:
        listed = {m.model: m.details for m in oll.list().models}
        for name in (MODEL, "smol-details:v1"):
            for d in (listed[name], oll.show(name).details):
                assert d is not None
                assert (d.format, d.family, d.quantization_level) == ("gguf", "llama", "Q4_1"), (name, d)
                assert d.parameter_size == "135M" and d.families == ["llama"], (name, d)
    finally:
        oll.delete("smol-details:v1")


def test_ollama_embed(oll: ollama.Client) -> None:
    r = oll.embed(model=MODEL, input=["first text", "second text"])
    assert len(r.embeddings) == 2 and all(len(v) == SMOLLM2_EMBEDDING_LENGTH for v in r.embeddings)
    single = oll.embeddings(model=MODEL, prompt="first text")
    assert len(single.embedding) == SMOLLM2_EMBEDDING_LENGTH


def test_ollama_errors_come_as_response_errors(oll: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        oll.chat(model="nosuch:1b", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 404


# ------------------------------------------------------------------ curl and the rest
@pytest.fixture(scope="module")
def curl() -> str:
    return need("curl")


def _curl(curl: str, dx: DXServer, path: str, body: dict | None = None) -> str:
    cmd = [curl, "-sS", "-N", "--fail-with-body", "-H", f"Authorization: Bearer {dx.api_key}", f"{dx.url}{path}"]
    if body is not None:
        cmd[1:1] = ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def test_curl_generate_streams_ndjson(curl: str, dx: DXServer) -> None:
    out = _curl(curl, dx, "/api/generate", {"model": MODEL, "prompt": "Hi", "options": FAST})
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) >= 2 and lines[-1]["done"] is True
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                "eval_duration", "done_reason"):
        assert key in lines[-1]


def test_curl_openai_sse_stream(curl: str, dx: DXServer) -> None:
    out = _curl(curl, dx, "/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "stream": True})
    events = [line[6:] for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all("choices" in json.loads(e) for e in events[:-1])


def test_curl_version_tags_and_non_stream(curl: str, dx: DXServer) -> None:
    from dx import __version__
    from dx.server.ollama_models import OLLAMA_API_VERSION

    assert json.loads(_curl(curl, dx, "/api/version")) == {"version": OLLAMA_API_VERSION, "dx_version": __version__}
    one = json.loads(_curl(curl, dx, "/api/chat", {"model": MODEL, "stream": False, "options": FAST,
                                                   "messages": [{"role": "user", "content": "Hi"}]}))
    assert one["done"] is True and one["message"]["content"]


def test_load_and_unload_with_empty_requests(dx: DXServer) -> None:
    loaded = httpx.post(f"{dx.url}/api/generate", headers=dx.headers, json={"model": MODEL}, timeout=60).json()
    assert loaded["done_reason"] == "load"
    gone = httpx.post(f"{dx.url}/api/generate", headers=dx.headers, json={"model": MODEL, "keep_alive": 0}).json()
    assert gone["done_reason"] == "unload"
    assert httpx.get(f"{dx.url}/api/ps", headers=dx.headers).json()["models"] == []
    again = httpx.post(f"{dx.url}/api/chat", headers=dx.headers, timeout=60, json={
        "model": MODEL, "stream": False, "options": FAST, "messages": [{"role": "user", "content": "Hi"}]}).json()
    assert again["done"] is True and again["load_duration"] > 0  # reloaded on demand


def test_llama_cpp_web_ui_through_dx(dx: DXServer) -> None:
    """Browsers get whatever the engine serves at / (llama.cpp's web UI when it is built in); an
    engine without it answers 404, and then DX's own page says where the APIs are."""
    page = httpx.get(f"{dx.url}/", headers={"Accept": "text/html"}, timeout=60)
    argvs = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in dx.children()]
    [argv] = [a for a in argvs if b"--embeddings" not in a]  # the generation engine
    engine_port = int(argv[argv.index(b"--port") + 1])
    direct = httpx.get(f"http://127.0.0.1:{engine_port}/", headers={"Accept": "text/html"}, timeout=60)
    if direct.status_code == 200:
        assert (page.headers["content-type"], page.content) == (direct.headers["content-type"], direct.content)
    else:
        assert direct.status_code == 404
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "/v1" in page.text and "/api" in page.text and MODEL in page.text
    assert httpx.get(f"{dx.url}/", timeout=10).text == "Ollama is running"  # what health checks grep for
    props = httpx.get(f"{dx.url}/props", timeout=30)  # llama.cpp's own API: the key is still required
    assert props.status_code == 401
    assert httpx.get(f"{dx.url}/props", headers=dx.headers, timeout=30).json()["model_alias"] == MODEL


def test_ollama_copy_pull_delete(oll: ollama.Client, dx: DXServer) -> None:
    oll.copy(MODEL, "smol-copy:v1")
    assert "smol-copy:v1" in [m.model for m in oll.list().models]
    r = oll.chat(model="smol-copy:v1", messages=[{"role": "user", "content": "Hi"}], options=FAST)
    assert r.done  # the copy is a name for the same blob, served like any store model
    progress = list(oll.pull("smol-copy:v1", stream=True))
    assert progress[-1].status == "success"
    oll.delete("smol-copy:v1")
    assert "smol-copy:v1" not in [m.model for m in oll.list().models]
    with pytest.raises(ollama.ResponseError) as err:
        oll.delete("smol-copy:v1")
    assert err.value.status_code == 404
    assert MODEL in [m.model for m in oll.list().models]  # the original and its blob are untouched
    assert oll.generate(model=MODEL, prompt="Hi", options=FAST).done
