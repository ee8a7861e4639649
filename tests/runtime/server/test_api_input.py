"""A real `dx serve` over raw HTTP: bad input is a 400 in the API's own error shape, never a 5xx;
model details for every model; OpenAI's GET /v1/models/{id}.

The server serves SmolLM2 from its store (a default model) and sees an Ollama
store with one more model; nothing here loads the engine: every request is
answered by DX itself before any engine would be asked.
"""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from typing import Any

import pytest
from support.serve_harness import DXServer, start_dx

pytestmark = pytest.mark.integration

MODEL = "smollm2:135m"
SMOL = {"format": "gguf", "family": "llama", "families": ["llama"], "parameter_size": "135M",
        "quantization_level": "Q4_1", "parent_model": ""}


def _ollama_store(root: Path, gguf: Path) -> Path:
    """Ollama's own layout (manifest + blob, no config blob), the GGUF hard-linked in."""
    sha = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    (root / "blobs").mkdir(parents=True)
    os.link(gguf, root / "blobs" / f"sha256-{sha}")
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / "olla-smol" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{sha}", "size": gguf.stat().st_size}]}))
    return root


@pytest.fixture(scope="module")
def dx(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from dx.models.catalog import Store

    tmp = tmp_path_factory.mktemp("api-input")
    store = Store(root=tmp / "home", ollama_dir=False)
    store.import_file(smollm2_gguf, MODEL)
    store.copy(MODEL, "hf.co/owner/repo:file-q4_1")
    ollama_dir = _ollama_store(tmp / "ollama", smollm2_gguf)
    server = start_dx(tmp, "--no-preload", model=MODEL, env={"OLLAMA_MODELS": str(ollama_dir)})
    yield server
    server.stop()


def call(dx: DXServer, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    """One request over a fresh connection; the body goes out byte for byte."""
    conn = http.client.HTTPConnection("127.0.0.1", dx.port, timeout=30)
    try:
        headers = {**dx.headers, "Content-Type": "application/json"}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        assert resp.getheader("Content-Type", "").startswith("application/json"), raw[:200]
        return resp.status, json.loads(raw)
    finally:
        conn.close()


def ollama_error(status: int, doc: Any, *needles: str) -> None:
    assert status == 400, (status, doc)
    assert isinstance(doc, dict) and list(doc) == ["error"] and isinstance(doc["error"], str), doc
    assert "\n" not in doc["error"]
    for n in needles:
        assert n in doc["error"], doc


def openai_error(status: int, doc: Any, *needles: str) -> None:
    assert status == 400, (status, doc)
    err = doc.get("error") if isinstance(doc, dict) else None
    assert isinstance(err, dict) and err.get("type") == "invalid_request_error" and err.get("code") == 400, doc
    for n in needles:
        assert n in err["message"], doc


BAD_NAMES = ["../../x", "/etc/passwd", "", "a" * 300, "a\x00b", "x/../../y", "..", "name:../tag"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_names_on_copy_and_delete_are_400(dx: DXServer, name: str) -> None:
    for method in ("POST", "DELETE"):
        status, doc = call(dx, method, "/api/delete", json.dumps({"model": name}).encode())
        ollama_error(status, doc)
    status, doc = call(dx, "POST", "/api/copy", json.dumps({"source": name, "destination": "ok:1"}).encode())
    ollama_error(status, doc)
    status, doc = call(dx, "POST", "/api/copy", json.dumps({"source": MODEL, "destination": name}).encode())
    ollama_error(status, doc)
    assert len(doc["error"]) < 400  # a megabyte-long name is not echoed back whole


BAD_BODIES = {
    "lone surrogate": (b'"\\ud800"', "lone UTF-16 surrogate"),
    "lone low surrogate": (b'"x\\udfff"', "lone UTF-16 surrogate"),
    "raw surrogate bytes": (b'"\xed\xa0\x80"', "not UTF-8"),
    "1e309": (b"1e309", "does not fit a double"),
    "-1e309": (b"-1e309", "does not fit a double"),
    "NaN": (b"NaN", "NaN is not a JSON number"),
    "Infinity": (b"Infinity", "Infinity is not a JSON number"),
    "-Infinity": (b"-Infinity", "-Infinity is not a JSON number"),
    "int past int64": (b"18446744073709551616", "does not fit in 64 bits"),
}


def _body(value: bytes, field: str, **rest: Any) -> bytes:
    head = json.dumps({"model": MODEL, **rest}).encode()[:-1]
    return head + b', "' + field.encode() + b'": ' + value + b"}"


@pytest.mark.parametrize("value,needle", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_json_the_engine_cannot_take_is_400_on_both_apis(dx: DXServer, value: bytes, needle: str) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    for path, body in [
        ("/api/chat", _body(value, "seed", messages=msgs, stream=False)),
        ("/api/generate", _body(value, "prompt" if b'"' in value else "seed", prompt="hi", stream=False)),
        ("/api/embed", _body(value, "truncate", input="hi")),
        ("/api/show", _body(value, "verbose")),
    ]:
        ollama_error(*call(dx, "POST", path, body), needle)
    for path, body in [
        ("/v1/chat/completions", _body(value, "temperature", messages=msgs)),
        ("/v1/completions", _body(value, "prompt" if b'"' in value else "seed", prompt="hi")),
        ("/v1/embeddings", _body(value, "input")),
    ]:
        openai_error(*call(dx, "POST", path, body), needle)


def test_malformed_and_non_object_bodies_are_400(dx: DXServer) -> None:
    ollama_error(*call(dx, "POST", "/api/chat", b'{"model": "x",'), "invalid JSON")
    ollama_error(*call(dx, "POST", "/api/chat", b"[]"), "JSON object")
    openai_error(*call(dx, "POST", "/v1/chat/completions", b""), "needs a JSON body")
    openai_error(*call(dx, "POST", "/v1/chat/completions", b"[" * 50_000), "nested too deeply")


def test_tags_and_show_carry_details_for_every_model(dx: DXServer) -> None:
    status, doc = call(dx, "GET", "/api/tags")
    assert status == 200
    by_name = {m["name"]: m for m in doc["models"]}
    assert set(by_name) == {MODEL, "hf.co/owner/repo:file-q4_1", "olla-smol:latest"}  # default, store, Ollama's
    for m in by_name.values():
        assert m["details"] == SMOL, m
    for name in by_name:
        status, shown = call(dx, "POST", "/api/show", json.dumps({"model": name}).encode())
        assert status == 200 and shown["details"] == SMOL, (name, shown.get("details"))


def test_v1_models_id_answers_like_openai(dx: DXServer) -> None:
    for model_id, path in [(MODEL, MODEL), ("hf.co/owner/repo:file-q4_1", "hf.co%2Fowner%2Frepo:file-q4_1"),
                           ("hf.co/owner/repo:file-q4_1", "hf.co/owner/repo:file-q4_1"),
                           ("smollm2:135m", "smollm2%3A135m")]:
        status, doc = call(dx, "GET", f"/v1/models/{path}")
        assert status == 200, (path, doc)
        assert set(doc) == {"id", "object", "created", "owned_by"} and doc["id"] == model_id
        assert doc["object"] == "model" and isinstance(doc["created"], int) and doc["owned_by"] == "dx"
    for path in ["nosuch:1b", "..%2F..%2Fetc%2Fpasswd", "%ff%fe", "hf:owner/repo/file.gguf"]:
        status, doc = call(dx, "GET", f"/v1/models/{path}")
        assert status == 404, (path, doc)
        assert doc["error"]["code"] == "model_not_found" and doc["error"]["type"] == "invalid_request_error"
    status, doc = call(dx, "GET", "/v1/models/")  # an empty id names no model (not even the default)
    assert status == 404 and doc["error"]["code"] == "model_not_found"
