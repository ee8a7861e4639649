"""``POST /api/blobs`` and ``/api/create`` with the real ``ollama`` client, the real engine and SmolLM2.

One server for the module, started with an empty store: the model arrives the way Open WebUI sends it
(``create_blob`` then ``create(files=…)``), then is shaped with ``create(from_=…, system=…, parameters=…)``.
What a created model's SYSTEM, MESSAGEs and stop do is checked exactly: greedy output of the created
model equals the base model's with the same messages written into the request, on /api/chat,
/api/generate and /v1/chat/completions. Every refusal is checked over raw HTTP (status, Ollama's words,
nothing left in the store).
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import httpx
import ollama
import pytest
from support.gguf_handcraft import STR, tiny_model
from support.serve_harness import DXServer, engine_binary, start_dx, wait_for
from support.tiny_lora import write_tiny_lora

pytestmark = pytest.mark.integration

BASE = "smol:135m"
GREEDY = {"temperature": 0, "seed": 7, "num_predict": 24}
PERSONA = "You are a pirate captain. You always answer like a pirate."
SHOTS = [{"role": "user", "content": "What is your ship called?"},
         {"role": "assistant", "content": "The Black Pearl, matey!"}]
PROMPT = "Tell me about yourself."


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def dx(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    server = start_dx(tmp_path_factory.mktemp("create"), "--ctx", "2048", engine=engine_binary(request))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oll(dx: DXServer) -> ollama.Client:
    return dx.ollama(timeout=180)


@pytest.fixture(scope="module")
def http(dx: DXServer) -> httpx.Client:
    return httpx.Client(base_url=dx.url, headers=dx.headers, timeout=180)


@pytest.fixture(scope="module")
def base(oll: ollama.Client, dx: DXServer, smollm2_gguf: Path) -> str:
    """SmolLM2 uploaded as a blob and created from ``files``: Open WebUI's upload flow."""
    digest = oll.create_blob(smollm2_gguf)
    assert (dx.home / "models" / "blobs" / digest.replace(":", "-")).is_file()
    done = oll.create(model=BASE, files={"SmolLM2-135M.gguf": digest})
    assert done.status == "success"
    return BASE


def _store_leftovers(dx: DXServer) -> list[str]:
    tmp = dx.home / "models" / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


def _chat(oll: ollama.Client, model: str, messages: list[dict[str, str]]) -> str:
    return oll.chat(model=model, messages=messages, options=GREEDY).message.content or ""


# ------------------------------------------------------------------ blobs
def test_upload_answers_like_ollama(base: str, http: httpx.Client, dx: DXServer, smollm2_gguf: Path) -> None:
    digest = _digest(smollm2_gguf.read_bytes())
    assert http.head(f"/api/blobs/{digest}").status_code == 200
    again = http.post(f"/api/blobs/{digest}", content=b"GGUF")  # already there: 200, body not even read
    assert again.status_code == 200
    assert not _store_leftovers(dx)


def test_upload_of_a_new_gguf_is_201(http: httpx.Client, dx: DXServer) -> None:
    data = tiny_model().build().data
    digest = _digest(data)
    assert http.head(f"/api/blobs/{digest}").status_code == 404
    r = http.post(f"/api/blobs/{digest}", content=data)
    assert r.status_code == 201 and r.content == b""
    assert (dx.home / "models" / "blobs" / digest.replace(":", "-")).read_bytes() == data
    assert http.head(f"/api/blobs/{digest}").status_code == 200


def test_wrong_digest_is_400_and_nothing_kept(http: httpx.Client, dx: DXServer) -> None:
    data = tiny_model(n_vocab=9).build().data
    wrong = "sha256:" + "0" * 64
    r = http.post(f"/api/blobs/{wrong}", content=data)
    assert r.status_code == 400
    assert r.json()["error"] == f'digest mismatch, expected "{wrong}", got "{_digest(data)}"'
    assert not (dx.home / "models" / "blobs" / ("sha256-" + "0" * 64)).exists()
    assert not (dx.home / "models" / "blobs" / _digest(data).replace(":", "-")).exists()
    assert not _store_leftovers(dx)


def test_not_a_gguf_is_400_without_a_path(http: httpx.Client, dx: DXServer) -> None:
    data = b"this is not a model\n" * 100
    r = http.post(f"/api/blobs/{_digest(data)}", content=data)
    assert r.status_code == 400
    msg = r.json()["error"]
    assert msg.startswith("supplied file was not in GGUF format") and str(dx.home) not in msg
    assert not _store_leftovers(dx)


def test_bad_digest_format_is_400(http: httpx.Client) -> None:
    r = http.post("/api/blobs/sha256:xyz", content=b"x")
    assert (r.status_code, r.json()) == (400, {"error": "invalid digest format"})


def test_more_than_the_free_disk_is_507_before_any_byte(dx: DXServer) -> None:
    digest = "sha256:" + "1" * 64
    host, port = dx.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        auth = "".join(f"{k}: {v}\r\n" for k, v in dx.headers.items())
        s.sendall(f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}"
                  f"Content-Length: {10 ** 17}\r\n\r\n".encode())  # 100 PB
        answer = s.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 507")
    assert "free" in answer
    assert not _store_leftovers(dx)


def test_truncated_upload_leaves_nothing(dx: DXServer) -> None:
    data = tiny_model(n_vocab=10).build().data
    digest = _digest(data)
    host, port = dx.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        auth = "".join(f"{k}: {v}\r\n" for k, v in dx.headers.items())
        s.sendall(f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}"
                  f"Content-Length: {len(data)}\r\n\r\n".encode() + data[: len(data) // 2])
        s.shutdown(socket.SHUT_WR)  # the client goes away half-way
        s.recv(65536)
    blob = dx.home / "models" / "blobs" / digest.replace(":", "-")
    assert wait_for(lambda: not _store_leftovers(dx), timeout=10)
    assert not blob.exists()


# ------------------------------------------------------------------ create
def test_create_from_with_system_messages_and_stop(oll: ollama.Client, base: str) -> None:
    # what the base model says greedily with the persona and the examples written into the request
    expected = _chat(oll, base, [{"role": "system", "content": PERSONA}, *SHOTS, {"role": "user", "content": PROMPT}])
    plain = _chat(oll, base, [{"role": "user", "content": PROMPT}])
    assert expected and expected != plain
    progress = list(oll.create(model="captain", from_=base, system=PERSONA, messages=SHOTS,
                               parameters={"temperature": 0, "num_ctx": 2048}, stream=True))
    assert [p.status for p in progress][-2:] == ["writing manifest", "success"]
    assert _chat(oll, "captain", [{"role": "user", "content": PROMPT}]) == expected

    # PARAMETER stop: the first word past the start of that reply ends it
    word = expected.split()[3]
    oll.create(model="captain-stop", from_="captain", parameters={"stop": [word]})
    cut = oll.chat(model="captain-stop", messages=[{"role": "user", "content": PROMPT}], options=GREEDY)
    assert cut.done_reason == "stop"
    assert expected.startswith(cut.message.content or "") and word not in (cut.message.content or "")


def test_generate_and_openai_get_the_persona(oll: ollama.Client, base: str, http: httpx.Client) -> None:
    oll.create(model="captain2", from_=base, system=PERSONA, messages=SHOTS)
    expected = _chat(oll, base, [{"role": "system", "content": PERSONA}, *SHOTS, {"role": "user", "content": PROMPT}])
    assert oll.generate(model="captain2", prompt=PROMPT, options=GREEDY).response == expected
    r = http.post("/v1/chat/completions", json={"model": "captain2", "messages": [{"role": "user", "content": PROMPT}],
                                                 "temperature": 0, "seed": 7, "max_tokens": 24})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == expected


def test_show_gives_it_back(oll: ollama.Client, base: str, http: httpx.Client) -> None:
    oll.create(model="shown", from_=base, system="Be brief.", template="{{ .Prompt }}", license="MIT",
               messages=SHOTS, parameters={"temperature": 0.5, "stop": ["<|im_end|>", "END"], "top_k": 20})
    s = oll.show("shown")
    assert s.template == "{{ .Prompt }}" and s.license == "MIT"
    raw = http.post("/api/show", json={"model": "shown"}).json()  # fields the client does not model
    assert raw["system"] == "Be brief." and raw["messages"] == SHOTS
    assert "temperature" in (s.parameters or "") and '"END"' in (s.parameters or "")
    mf = s.modelfile or ""
    assert f"FROM {base}" in mf and "SYSTEM Be brief." in mf and "PARAMETER stop END" in mf
    assert "MESSAGE assistant The Black Pearl, matey!" in mf and "TEMPLATE {{ .Prompt }}" in mf
    assert "/" not in mf.split("FROM ", 2)[-1].splitlines()[0]  # no server path


def test_template_note_is_a_status_line(http: httpx.Client, base: str) -> None:
    r = http.post("/api/create", json={"model": "tmpl", "from": base, "template": "{{ .Prompt }}"})
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert any("Jinja" in x["status"] for x in lines) and lines[-1] == {"status": "success"}


def test_stream_false_is_one_object(http: httpx.Client, base: str) -> None:
    r = http.post("/api/create", json={"model": "quiet", "from": base, "stream": False})
    assert (r.status_code, r.json()) == (200, {"status": "success"})


def test_adapter_and_draft_are_checked_and_recorded(http: httpx.Client, oll: ollama.Client, base: str,
                                                    dx: DXServer, smollm2_gguf: Path, tmp_path: Path) -> None:
    model_blob = _digest(tiny_model(n_vocab=11).build().data)
    http.post(f"/api/blobs/{model_blob}", content=tiny_model(n_vocab=11).build().data)
    r = http.post("/api/create", json={"model": "lora", "from": base, "adapters": {"a.gguf": model_blob}})
    assert r.status_code == 400 and r.json()["error"].startswith(f"ADAPTER {model_blob} is not an adapter")
    r = http.post("/api/create", json={"model": "spec", "from": base, "draft_files": {"d.gguf": model_blob}})
    assert r.status_code == 400 and r.json()["error"].startswith(f"DRAFT {model_blob}: ")
    assert "not compatible" in r.json()["error"] and str(dx.home) not in r.json()["error"]

    craft = tiny_model(n_vocab=12)  # says it is an adapter, has no LoRA tensors: the engine could not load it
    craft.kvs = [kv for kv in craft.kvs if not kv[0].startswith("tokenizer.")] + [("general.type", STR, "adapter")]
    for wrong, words in ((craft.build().data, "is not a LoRA adapter"),
                         (write_tiny_lora(tmp_path / "qwen.gguf", arch="qwen2").read_bytes(),
                          "is for architecture 'qwen2', the model is 'llama'")):
        http.post(f"/api/blobs/{_digest(wrong)}", content=wrong)
        r = http.post("/api/create", json={"model": "lora", "from": base, "adapters": {"a.gguf": _digest(wrong)}})
        assert r.status_code == 400 and r.json()["error"].startswith(f"ADAPTER {_digest(wrong)} {words}"), r.text
        assert str(dx.home) not in r.json()["error"]
    adapter = write_tiny_lora(tmp_path / "tiny-lora.gguf").read_bytes()
    http.post(f"/api/blobs/{_digest(adapter)}", content=adapter)
    own = _digest(smollm2_gguf.read_bytes())  # SmolLM2 drafts for itself: the same vocabulary
    r = http.post("/api/create", json={"model": "shaped", "from": base, "adapters": {"a.gguf": _digest(adapter)},
                                      "draft_files": {"d.gguf": own}, "parameters": {"draft_num_predict": 3},
                                      "stream": False})
    assert r.status_code == 200, r.text
    mf = oll.show("shaped").modelfile or ""
    assert f"ADAPTER {_digest(adapter)}" in mf and f"DRAFT {own}" in mf


def test_a_lora_adapter_changes_greedy_output(oll: ollama.Client, base: str, dx: DXServer,
                                             tmp_path: Path) -> None:
    lora = write_tiny_lora(tmp_path / "tiny-lora.gguf")
    digest = oll.create_blob(lora)
    assert oll.create(model="tuned", from_=base, adapters={"tiny-lora.gguf": digest}).status == "success"
    plain = _chat(oll, base, [{"role": "user", "content": PROMPT}])
    tuned = _chat(oll, "tuned", [{"role": "user", "content": PROMPT}])
    assert tuned and tuned != plain
    blob = str(dx.home / "models" / "blobs" / digest.replace(":", "-"))
    cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") for pid in dx.children()]
    assert any(c[c.index("--lora") + 1] == blob for c in cmdlines if "--lora" in c)


def test_draft_serves(oll: ollama.Client, base: str, dx: DXServer, smollm2_gguf: Path) -> None:
    """A created model's DRAFT gets its own engine, timed by --spec auto (the default) with and without the
    draft at load; the engine that serves is the one the decision names, and the answer is the base's."""
    own = _digest(smollm2_gguf.read_bytes())
    r = httpx.post(f"{dx.url}/api/create", headers=dx.headers, timeout=60,
                   json={"model": "drafted", "from": base, "draft_files": {"d.gguf": own}, "stream": False})
    assert r.status_code == 200, r.text
    expected = _chat(oll, base, [{"role": "user", "content": PROMPT}])
    assert _chat(oll, "drafted", [{"role": "user", "content": PROMPT}]) == expected
    ps = httpx.get(f"{dx.url}/api/ps", headers=dx.headers, timeout=30).json()  # ollama's client drops dx_*
    (spec,) = [m.get("dx_speculation") for m in ps["models"] if m["name"] == "drafted:latest"]
    assert spec["mode"] == "auto" and spec["reason"], spec  # measured (or, on a loaded moment, why not)
    cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in dx.children()]
    blob = str(dx.home / "models" / "blobs" / own.replace(":", "-")).encode()
    drafting = [c for c in cmdlines if b"--spec-draft-model" in c]
    assert len(drafting) == (1 if spec["speculating"] else 0), cmdlines
    assert all(c[c.index(b"--spec-draft-model") + 1] == blob for c in drafting)


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"model": "x", "from": "no-such-model"}, 400, "model 'no-such-model' not found"),
    ({"model": "x", "from": BASE, "parameters": {"temprature": 1}}, 400, "unknown parameter 'temprature'"),
    ({"model": "x", "from": BASE, "parameters": {"num_ctx": "big"}}, 400, "parameter 'num_ctx' must be an integer"),
    ({"model": "x", "from": BASE, "parameters": {"top_k": 1.5}}, 400, "parameter 'top_k' must be an integer"),
    ({"model": "x", "files": {"m.gguf": "sha256:" + "2" * 64}}, 400, "not found; upload it first"),
    ({"model": "x", "files": {"../m.gguf": "sha256:" + "2" * 64}}, 400, "file path must be relative"),
    ({"model": "x"}, 400, "neither 'from' or 'files' was specified"),
    ({"model": "x", "from": "/etc/passwd"}, 400, "the API takes a model name or a blob digest"),
    ({"model": "../x", "from": BASE}, 400, ""),
    ({"model": "x", "from": BASE, "messages": [{"role": "robot", "content": "x"}]}, 400, "message role"),
])
def test_refusals(http: httpx.Client, base: str, dx: DXServer, body: dict, status: int, words: str) -> None:
    r = http.post("/api/create", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"] and str(dx.home) not in r.json()["error"]
    assert http.post("/api/show", json={"model": "x"}).status_code == 404


def test_create_from_the_model_a_server_was_started_with(request: pytest.FixtureRequest, smollm2_gguf: Path,
                                                         tmp_path: Path) -> None:
    """``dx serve FILE.gguf``: the created model names the file's bytes in place (no copy into the store)."""
    server = start_dx(tmp_path, "--no-preload", engine=engine_binary(request), model=str(smollm2_gguf))
    try:
        http = httpx.Client(base_url=server.url, headers=server.headers, timeout=60)
        default = http.get("/api/tags").json()["models"][0]["name"]
        r = http.post("/api/create", json={"model": "persona", "from": default, "system": "Be kind.", "stream": False})
        assert r.status_code == 200, r.text
        shown = http.post("/api/show", json={"model": "persona"}).json()
        assert shown["system"] == "Be kind." and f"FROM {default}" in shown["modelfile"]
        assert not list((server.home / "models" / "blobs").glob("sha256-*"))  # nothing copied
        chat = http.post("/api/chat", json={"model": "persona", "stream": False, "options": GREEDY,
                                            "messages": [{"role": "user", "content": "Hi"}]}, timeout=180)
        assert chat.status_code == 200 and chat.json()["message"]["content"]
        clash = http.post("/api/create", json={"model": default, "from": default})
        assert clash.status_code == 409
    finally:
        server.stop()
