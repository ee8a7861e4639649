"""What front-ends and probes check on the wire, against a real `dx serve` (auth on) with the real engine:
``/`` and ``/api/version`` as Ollama answers them (public), the key in every form clients send it, ``HEAD
/api/blobs``, Anthropic's Messages API through the `anthropic` SDK, and Ollama's environment reaching the
bind and the engine's argv. One server for the module (the engine starts once)."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import httpx
import pytest
from support.serve_harness import DXServer, dx_env, engine_binary, start_dx, stop_process, wait_for

pytestmark = pytest.mark.integration

MODEL = "smollm2:135m"
SMOL_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
OLLAMA_ONLY_SHA = "ab" * 32  # a blob only Ollama's store holds
ENGINE_ENV = {"OLLAMA_NUM_PARALLEL": "2", "OLLAMA_CONTEXT_LENGTH": "1024", "OLLAMA_FLASH_ATTENTION": "1",
              "OLLAMA_KV_CACHE_TYPE": "q8_0"}


@pytest.fixture(scope="module")
def dx(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from dx.models.catalog import Store

    tmp = tmp_path_factory.mktemp("wire")
    Store(root=tmp / "home", ollama_dir=False).import_file(smollm2_gguf, MODEL)
    ollama_store = tmp / "ollama-models"
    (ollama_store / "blobs").mkdir(parents=True)
    (ollama_store / "blobs" / f"sha256-{OLLAMA_ONLY_SHA}").write_bytes(b"not a model")
    server = start_dx(tmp, engine=engine_binary(request), model=MODEL,
                      env={**ENGINE_ENV, "OLLAMA_MODELS": str(ollama_store)})
    assert server.api_key, "auth is on"
    yield server
    server.stop()


def _get(dx: DXServer, path: str, method: str = "GET", **headers: str) -> httpx.Response:
    return httpx.request(method, f"{dx.url}{path}", headers=headers, timeout=30)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---------------------------------------------------------------- / and /api/version, public as in Ollama
def test_root_says_ollama_is_running(dx: DXServer) -> None:
    for method in ("GET", "HEAD"):
        resp = _get(dx, "/", method)  # no key
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        assert resp.headers["content-length"] == str(len("Ollama is running"))
        assert resp.text == ("Ollama is running" if method == "GET" else "")


def test_version_is_public_and_an_ollama_semver(dx: DXServer) -> None:
    from dx import __version__

    resp = _get(dx, "/api/version")  # no key: probes and VS Code ask before they know one
    assert resp.status_code == 200
    doc = resp.json()
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", doc["version"])
    assert match and tuple(int(g) for g in match.groups()) >= (0, 6, 4), doc  # VS Code Copilot's floor
    assert doc["dx_version"] == __version__ and resp.headers["x-dx-version"] == __version__


def test_everything_else_needs_the_key(dx: DXServer) -> None:
    for path in ("/api/tags", "/api/ps", "/v1/models"):
        resp = _get(dx, path)
        assert resp.status_code == 401, path
        assert "X-Api-Key" in resp.text and "Basic" in resp.text and "www-authenticate" in resp.headers
        assert dx.api_key not in resp.text  # type: ignore[operator]
    assert _get(dx, "/api/blobs/sha256:" + SMOL_SHA, "HEAD").status_code == 401


# ---------------------------------------------------------------- the key in every form
def test_every_form_of_the_key(dx: DXServer) -> None:
    key = dx.api_key or ""
    forms = [{"Authorization": f"Bearer {key}"}, {"X-Api-Key": key}, {"Authorization": _basic("anyone", key)}]
    for headers in forms:
        resp = _get(dx, "/api/tags", **headers)
        assert resp.status_code == 200, headers.keys()
        assert MODEL in {m["name"] for m in resp.json()["models"]}
    # LangChain's http://user:KEY@host: httpx turns the URL's userinfo into Basic, as requests does
    assert httpx.get(f"{dx.url.replace('http://', f'http://me:{key}@')}/api/tags", timeout=30).status_code == 200


def test_a_wrong_key_in_every_form_is_401(dx: DXServer) -> None:
    key = dx.api_key or ""
    for headers in ({"Authorization": f"Bearer {key}x"}, {"X-Api-Key": key[:-1]},
                    {"Authorization": _basic("anyone", "wrong")}, {"Authorization": _basic(key, "")},
                    {"Authorization": "Basic %%%not-base64"}, {"X-Api-Key": ""}):
        resp = _get(dx, "/api/tags", **headers)
        assert resp.status_code == 401, headers  # a malformed header is not a 500
        assert resp.json()["error"].startswith("missing or wrong API key")


# ---------------------------------------------------------------- HEAD /api/blobs
def test_head_blobs(dx: DXServer) -> None:
    key = {"X-Api-Key": dx.api_key or ""}
    assert _get(dx, f"/api/blobs/sha256:{SMOL_SHA}", "HEAD", **key).status_code == 200  # DX's store
    assert _get(dx, f"/api/blobs/sha256-{SMOL_SHA.upper()}", "HEAD", **key).status_code == 200
    assert _get(dx, f"/api/blobs/sha256:{OLLAMA_ONLY_SHA}", "HEAD", **key).status_code == 200  # Ollama's, read-only
    assert _get(dx, f"/api/blobs/sha256:{'0' * 64}", "HEAD", **key).status_code == 404
    for bad in ("sha256:abc", "md5:" + "0" * 32, "sha256:" + "g" * 64, "..%2F..%2Fetc%2Fpasswd"):
        assert _get(dx, f"/api/blobs/{bad}", "HEAD", **key).status_code == 400, bad
    # an upload whose bytes are not the digest: Ollama's words, nothing kept (uploads: test_create_api.py)
    post = httpx.post(f"{dx.url}/api/blobs/sha256:{'0' * 64}", headers=key, content=b"x", timeout=30)
    assert post.status_code == 400 and post.json()["error"].startswith(f'digest mismatch, expected "sha256:{"0" * 64}"')


# ---------------------------------------------------------------- Anthropic's Messages API, by the SDK
def test_anthropic_sdk_messages(dx: DXServer) -> None:
    client = anthropic.Anthropic(base_url=dx.url, api_key=dx.api_key, max_retries=0, timeout=120)  # x-api-key
    msg = client.messages.create(model=MODEL, max_tokens=8,
                                 messages=[{"role": "user", "content": "Say hello"}])
    assert msg.type == "message" and msg.role == "assistant" and msg.content[0].type == "text"
    assert msg.content[0].text and msg.usage.output_tokens > 0
    with client.messages.stream(model=MODEL, max_tokens=8,
                                messages=[{"role": "user", "content": "Say hello"}]) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == final.content[0].text
    counted = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "Say hello"}])
    assert counted.input_tokens > 0


# Greedy SmolLM2 answers this with "🌟" first: a first token that is part of a UTF-8 character, so the engine
# sends no chunk for it. Unpatched llama-server opened a stream only with the chunk of token 1: these never opened.
EMOJI_FIRST = [{"role": "user", "content": "Repeat exactly: 🌟 hello"}]


def _sse(dx: DXServer, path: str, body: dict) -> list[tuple[str, dict]]:
    """(event name, data) of each event of a stream (the event name is "" where the API sends none)."""
    with httpx.stream("POST", f"{dx.url}{path}", headers=dx.headers, json={**body, "stream": True},
                      timeout=120) as resp:
        assert resp.status_code == 200, resp.read()
        text = resp.read().decode()
    events = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if lines.get("data", "[DONE]") != "[DONE]":
            events.append((lines.get("event", ""), json.loads(lines["data"])))
    return events


def test_a_stream_whose_first_token_is_half_an_emoji_still_opens(dx: DXServer) -> None:
    msgs = _sse(dx, "/v1/messages", {"model": MODEL, "max_tokens": 8, "temperature": 0, "messages": EMOJI_FIRST})
    texts = [d["delta"]["text"] for e, d in msgs if e == "content_block_delta"]
    assert texts and texts[0].startswith("🌟"), texts  # the case under test: else the model changed, not DX
    names = [e for e, _ in msgs]
    assert names[0] == "message_start" and names.count("message_start") == 1, names
    assert msgs[0][1]["message"]["usage"]["input_tokens"] > 0
    client = anthropic.Anthropic(base_url=dx.url, api_key=dx.api_key, max_retries=0, timeout=120)
    with client.messages.stream(model=MODEL, max_tokens=8, messages=EMOJI_FIRST, extra_body={"temperature": 0}) as stream:
        assert stream.get_final_message().content[0].text.startswith("🌟")

    chat = _sse(dx, "/v1/chat/completions", {"model": MODEL, "max_tokens": 8, "temperature": 0,
                                             "messages": EMOJI_FIRST})
    deltas = [d["choices"][0]["delta"] for _, d in chat if d.get("choices")]
    assert deltas[0].get("role") == "assistant" and [d.get("role") for d in deltas].count("assistant") == 1, deltas

    resp = _sse(dx, "/v1/responses", {"model": MODEL, "max_output_tokens": 8, "temperature": 0,
                                      "input": EMOJI_FIRST[0]["content"]})
    kinds = [d["type"] for _, d in resp]
    assert kinds[0] == "response.created" and kinds.count("response.created") == 1, kinds
    assert kinds[-1] == "response.completed", kinds


def test_a_stream_with_only_its_final_chunk_still_opens(dx: DXServer) -> None:
    """One token, half an emoji: no chunk went out before the final one, which opens the stream itself."""
    msgs = _sse(dx, "/v1/messages", {"model": MODEL, "max_tokens": 1, "temperature": 0, "messages": EMOJI_FIRST})
    names = [e for e, _ in msgs]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"], names
    assert msgs[0][1]["message"]["usage"]["input_tokens"] > 0
    chat = _sse(dx, "/v1/chat/completions", {"model": MODEL, "max_tokens": 1, "temperature": 0,
                                             "messages": EMOJI_FIRST})
    deltas = [d["choices"][0] for _, d in chat if d.get("choices")]
    assert deltas[0]["delta"].get("role") == "assistant" and deltas[-1]["finish_reason"] == "length", deltas
    resp = _sse(dx, "/v1/responses", {"model": MODEL, "max_output_tokens": 1, "temperature": 0,
                                      "input": EMOJI_FIRST[0]["content"]})
    kinds = [d["type"] for _, d in resp]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed", kinds


def test_anthropic_errors_in_anthropic_shape(dx: DXServer) -> None:
    with pytest.raises(anthropic.AuthenticationError) as denied:
        anthropic.Anthropic(base_url=dx.url, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "x"}])
    assert denied.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                            "message": denied.value.body["error"]["message"]}}
    client = anthropic.Anthropic(base_url=dx.url, api_key=dx.api_key, max_retries=0, timeout=60)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["type"] == "error" and missing.value.body["error"]["type"] == "not_found_error"
    bad = httpx.post(f"{dx.url}/v1/messages", headers={"X-Api-Key": dx.api_key or ""}, content=b"{not json",
                     timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    for path in ("/v1/messages", "/v1/messages/count_tokens"):  # the engine's 500 (or a runaway) is a 400 here
        for body, words in (({"model": MODEL}, "messages: Field required"),
                            ({"model": MODEL, "messages": "hi"}, "messages: Input should be a valid list")):
            resp = httpx.post(f"{dx.url}{path}", headers={"X-Api-Key": dx.api_key or ""}, json=body, timeout=30)
            assert resp.status_code == 400 and resp.json() == {
                "type": "error", "error": {"type": "invalid_request_error", "message": words}}, resp.text


# ---------------------------------------------------------------- Ollama's environment reaches the engine
def test_ollama_engine_variables_in_the_engines_argv(dx: DXServer) -> None:
    client = anthropic.Anthropic(base_url=dx.url, api_key=dx.api_key, max_retries=0, timeout=120)
    assert client.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi"}]).content
    [log] = [p for p in (dx.home / "logs").glob("engine-*.log") if "-embed" not in p.name]
    first = log.read_text(errors="replace").splitlines()[0]
    assert first.startswith("+ ") and "llama-server" in first
    argv = first.split()
    assert argv[argv.index("--parallel") + 1] == "2"  # OLLAMA_NUM_PARALLEL
    assert argv[argv.index("-c") + 1] == str(1024 * 2)  # OLLAMA_CONTEXT_LENGTH per slot, as Ollama's -c
    assert argv[argv.index("--flash-attn") + 1] == "on"  # OLLAMA_FLASH_ATTENTION=1
    assert argv[argv.index("--cache-type-k") + 1] == argv[argv.index("--cache-type-v") + 1] == "q8_0"
    ps = httpx.get(f"{dx.url}/api/ps", headers=dx.headers, timeout=30).json()["models"]
    assert ps and ps[0]["context_length"] == 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ollama_host_sets_the_bind(tmp_path: Path) -> None:
    port = _free_port()
    env = {**dx_env(tmp_path, None), "OLLAMA_HOST": f"127.0.0.1:{port}"}
    for name in ("DX_HOST", "DX_PORT"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "dx", "serve", "--no-preload", "--no-auth"],  # no --port
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        assert proc.stdout is not None
        deadline, lines = time.monotonic() + 60, []
        while time.monotonic() < deadline and not any("serving" in line for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert any(f"on http://127.0.0.1:{port}" in line for line in lines), lines
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text == "Ollama is running"
    finally:
        stop_process(proc)
        proc.stdout.close()  # type: ignore[union-attr]


def test_ollama_origins_wildcard_stops_dx_with_one_line(tmp_path: Path) -> None:
    env = {**dx_env(tmp_path, None), "OLLAMA_ORIGINS": "*", "OLLAMA_HOST": f"127.0.0.1:{_free_port()}"}
    done = subprocess.run([sys.executable, "-m", "dx", "serve", "--no-preload"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("dx: error: OLLAMA_ORIGINS='*'"), done.stderr
    assert "list each origin in full" in done.stderr and "Traceback" not in done.stderr
    assert os.environ.get("OLLAMA_ORIGINS") != "*"  # the test's own environment is untouched


def test_ollama_max_queue_bounds_requests_with_503(tmp_path: Path) -> None:
    """OLLAMA_MAX_QUEUE=1: one request in progress, the next is Ollama's "server busy" (503 + Retry-After)."""
    server = start_dx(tmp_path, "--no-preload", "--no-auth", env={"OLLAMA_MAX_QUEUE": "1"})
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as held:
            # headers complete, body not: this request holds the one worker while dx waits for its body
            held.sendall(b"POST /api/show HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
            deadline = time.monotonic() + 10
            while True:
                busy = httpx.get(f"{server.url}/api/tags", timeout=10)
                if busy.status_code == 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1", busy.text
            assert "server busy" in busy.json()["error"]
        assert wait_for(lambda: httpx.get(f"{server.url}/api/tags", timeout=10).status_code == 200)
    finally:
        server.stop()
