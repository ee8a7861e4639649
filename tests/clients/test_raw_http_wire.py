"""Raw HTTP against the minted executable, auth on: every refusal the issue lists gets its 4xx in Ollama's
words (never a 5xx for a client's request), and the wire details front-ends check."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from packaging.version import Version
from support.minted_server import MODEL, MintedServer

pytestmark = pytest.mark.integration

# a 1x1 PNG: what a vision client attaches
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()
FAST = {"num_predict": 8, "temperature": 0, "seed": 7}


def refused(r: httpx.Response, status: int, words: str) -> str:
    """The answer is ``status`` with Ollama's error shape, its message holding ``words`` and no server path."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    doc = r.json()
    assert set(doc) == {"error"} and isinstance(doc["error"], str), doc
    assert words in doc["error"], doc
    assert "/.dx" not in doc["error"] and "/tmp/" not in doc["error"] and "/root" not in doc["error"], doc
    return doc["error"]


def capabilities(api: httpx.Client) -> list[str]:
    r = api.post("/api/show", json={"model": MODEL})
    assert r.status_code == 200, r.text
    return r.json()["capabilities"]


# ------------------------------------------------------------------ fields refused in Ollama's words
@pytest.mark.parametrize("route", ["/api/chat", "/api/generate"])
@pytest.mark.parametrize("think", [True, "high"])
def test_think_on_a_model_that_does_not_reason_is_400(api: httpx.Client, route: str, think: object) -> None:
    body = {"model": MODEL, "think": think, "stream": False, "options": FAST}
    body |= {"messages": [{"role": "user", "content": "Hi"}]} if route == "/api/chat" else {"prompt": "Hi"}
    assert "thinking" not in capabilities(api)
    refused(api.post(route, json=body), 400, f'"{MODEL}" does not support thinking')


def test_think_false_is_fine_on_any_model(api: httpx.Client) -> None:
    r = api.post("/api/chat", json={"model": MODEL, "think": False, "stream": False, "options": FAST,
                                    "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.text
    assert "thinking" not in r.json()["message"] or not r.json()["message"]["thinking"]


def test_suffix_is_infill_or_400_as_show_says(api: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "def add(a, b):\n    return ", "suffix": "\n\nprint(add(1, 2))\n",
            "stream": False, "options": FAST}
    r = api.post("/api/generate", json=body)
    if "insert" in capabilities(api):  # the model has FIM tokens: the engine fills the middle
        assert r.status_code == 200, r.text
        plain = api.post("/api/generate", json={**body, "suffix": None}).json()["response"]
        assert r.json()["done"] and r.json()["response"] != plain, (r.json(), plain)  # not the suffix ignored
        assert ".Suffix" in api.post("/api/show", json={"model": MODEL}).json()["template"]
    else:
        refused(r, 400, f'"{MODEL}" does not support insert')


def test_images_on_a_text_only_model_are_400_on_chat(api: httpx.Client) -> None:
    assert "vision" not in capabilities(api)
    for stream in (False, True):
        r = api.post("/api/chat", json={"model": MODEL, "stream": stream, "options": FAST,
                                        "messages": [{"role": "user", "content": "What is this?", "images": [PNG]}]})
        refused(r, 400, f'"{MODEL}" does not support images')


def test_images_on_a_text_only_model_are_400_on_generate(api: httpx.Client) -> None:
    for stream in (False, True):
        r = api.post("/api/generate", json={"model": MODEL, "prompt": "What is this?", "images": [PNG],
                                            "stream": stream, "options": FAST})
        refused(r, 400, f'"{MODEL}" does not support images')


def test_images_through_openai_on_a_text_only_model_are_a_4xx(api: httpx.Client) -> None:
    r = api.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json()["error"]["message"], r.text


def test_rerank_on_a_model_that_is_not_a_reranker_is_400(api: httpx.Client) -> None:
    r = api.post("/api/rerank", json={"model": MODEL, "query": "a cat", "documents": ["a cat sat", "stocks fell"]})
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.json()["error"], r.text
    r = api.post("/v1/rerank", json={"model": MODEL, "query": "a cat", "documents": ["a cat sat", "stocks fell"]})
    assert r.status_code == 400, (r.status_code, r.text)


def test_logprobs_are_returned(api: httpx.Client) -> None:
    r = api.post("/api/chat", json={"model": MODEL, "stream": False, "logprobs": True, "top_logprobs": 2,
                                    "options": FAST, "messages": [{"role": "user", "content": "Say hello."}]})
    assert r.status_code == 200, r.text
    logprobs = r.json().get("logprobs")
    assert logprobs and len(logprobs) == r.json()["eval_count"], r.json()
    first = logprobs[0]
    assert isinstance(first["token"], str) and first["logprob"] <= 0 and len(first["top_logprobs"]) == 2, first


# ------------------------------------------------------------------ wire details
def test_root_says_ollama_is_running_without_a_key(dx: MintedServer) -> None:
    r = httpx.get(f"{dx.url}/", timeout=30)
    assert r.status_code == 200 and r.text == "Ollama is running", (r.status_code, r.text)
    head = httpx.head(f"{dx.url}/", timeout=30)
    assert head.status_code == 200 and head.content == b""


def test_version_is_public_and_at_least_0_6_4(dx: MintedServer) -> None:
    r = httpx.get(f"{dx.url}/api/version", timeout=30)
    assert r.status_code == 200, (r.status_code, r.text)
    version = Version(r.json()["version"])
    assert version >= Version("0.6.4") and not version.local, r.json()


def test_nothing_else_is_public(dx: MintedServer) -> None:
    for method, path in (("GET", "/api/tags"), ("GET", "/api/ps"), ("POST", "/api/show"), ("POST", "/api/chat"),
                         ("GET", "/v1/models"), ("POST", "/v1/messages")):
        r = httpx.request(method, f"{dx.url}{path}", json={"model": MODEL}, timeout=30)
        assert r.status_code == 401, (method, path, r.status_code, r.text)


@pytest.mark.parametrize("form", ["bearer", "x-api-key", "basic"])
def test_every_key_form_is_taken_and_a_wrong_one_refused(dx: MintedServer, form: str) -> None:
    def header(key: str) -> dict[str, str]:
        if form == "bearer":
            return {"Authorization": f"Bearer {key}"}
        if form == "x-api-key":
            return {"X-Api-Key": key}
        return {"Authorization": "Basic " + base64.b64encode(f"user:{key}".encode()).decode()}

    assert httpx.get(f"{dx.url}/api/tags", headers=header(dx.api_key), timeout=30).status_code == 200
    wrong = httpx.get(f"{dx.url}/api/tags", headers=header(dx.api_key[:-1] + "x"), timeout=30)
    assert wrong.status_code == 401, wrong.text
    assert dx.api_key[:8] not in wrong.text


def test_head_of_an_absent_blob_is_404(api: httpx.Client) -> None:
    r = api.head("/api/blobs/sha256:" + "0" * 64)
    assert r.status_code == 404, r.status_code


def test_show_tags_and_ps_carry_ollamas_fields(api: httpx.Client) -> None:
    show = api.post("/api/show", json={"model": MODEL}).json()
    assert {"completion", "tools"} <= set(show["capabilities"]), show["capabilities"]
    assert show["model_info"]["llama.context_length"] == 8192 and show["model_info"]["general.basename"], show
    assert show["template"] and show["modified_at"] and isinstance(show["parameters"], str), show
    (model,) = [m for m in api.get("/api/tags").json()["models"] if m["name"].split(":")[0] == MODEL]
    assert model["details"]["quantization_level"] == "Q4_1" and model["details"]["family"] == "llama", model
    assert "completion" in model.get("capabilities", []), model
    api.post("/api/generate", json={"model": MODEL, "prompt": "Hi", "options": {"num_predict": 1}, "stream": False})
    ps = api.get("/api/ps").json()["models"]
    assert ps and {"expires_at", "size_vram", "context_length"} <= set(ps[0]), ps


# ------------------------------------------------------------------ managing the embedded model
def test_copy_show_and_delete_the_embedded_model(api: httpx.Client) -> None:
    r = api.post("/api/copy", json={"source": MODEL, "destination": "my-smollm2:copy"})
    assert r.status_code == 200, r.text
    names = [m["name"] for m in api.get("/api/tags").json()["models"]]
    assert "my-smollm2:copy" in names, names
    shown = api.post("/api/show", json={"model": "my-smollm2:copy"})
    assert shown.status_code == 200 and shown.json()["details"]["quantization_level"] == "Q4_1", shown.text
    chat = api.post("/api/chat", json={"model": "my-smollm2:copy", "stream": False, "options": FAST,
                                       "messages": [{"role": "user", "content": "Hi"}]})
    assert chat.status_code == 200 and chat.json()["message"]["content"], chat.text
    r = api.request("DELETE", "/api/delete", json={"model": "my-smollm2:copy"})
    assert r.status_code == 200, r.text
    assert "my-smollm2:copy" not in [m["name"] for m in api.get("/api/tags").json()["models"]]


def test_deleting_the_served_model_is_a_clear_409(api: httpx.Client) -> None:
    r = api.request("DELETE", "/api/delete", json={"model": MODEL})
    refused(r, 409, MODEL)


def test_copy_of_an_absent_model_is_404_without_a_path(api: httpx.Client) -> None:
    refused(api.post("/api/copy", json={"source": "no-such-model", "destination": "x"}), 404, "no-such-model")


def test_pull_of_the_embedded_model_succeeds_offline(api: httpx.Client) -> None:
    r = api.post("/api/pull", json={"model": MODEL, "stream": False})
    assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
    with api.stream("POST", "/api/pull", json={"model": MODEL}) as r:
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line.strip()]
    assert lines and lines[-1] == {"status": "success"}, lines


def test_pull_that_truly_fails_is_not_a_5xx_500(api: httpx.Client) -> None:
    r = api.post("/api/pull", json={"model": "no-such-owner/no-such-model-xyz:q9", "stream": False})
    assert r.status_code != 500 and (400 <= r.status_code < 500 or r.status_code == 502), (r.status_code, r.text)
    assert r.json()["error"], r.text
