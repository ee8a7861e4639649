"""`dx push` / `/api/push` round trips through a REAL registry and the real engine.

The registry is Debian's docker-registry (distribution 2.8) on loopback (the session fixture
``oci_registry``); the store, the server (auth on), the engine, the SmolLM2 GGUF and the `ollama`
Python client are the real ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import ollama
import pytest
from support.oci_registry import OCIRegistry
from support.serve_harness import dx_env, engine_binary, start_dx

from dx.models.catalog import Store
from dxverify.hashing import sha256_file

pytestmark = pytest.mark.integration

SMOL_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _dx(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dx_env(home, None)
    env.pop("DX_OLLAMA_REGISTRY", None)
    return subprocess.run([sys.executable, "-m", "dx", *args], env=env, capture_output=True, text=True, timeout=300)


def test_push_then_a_fresh_home_pulls_it_back_byte_identical_and_it_serves(
    tmp_path: Path, oci_registry: OCIRegistry, smollm2_gguf: Path, request: pytest.FixtureRequest
) -> None:
    here = tmp_path / "a" / "home"
    Store(here, ollama_dir=False).import_file(smollm2_gguf, "smol")
    name = f"{oci_registry.host}/dxtest/roundtrip{os.getpid()}:v1"
    pushed = _dx(here, "push", "smol", name, "--insecure")
    assert pushed.returncode == 0, pushed.stderr
    digest = pushed.stdout.split()[0].split("@")[1]
    assert oci_registry.manifest(f"dxtest/roundtrip{os.getpid()}", "v1")[1] == digest

    there = tmp_path / "b"  # a fresh HOME and DX_HOME: nothing but the registry in common
    pulled = _dx(there / "home", "pull", name, "--insecure")
    assert pulled.returncode == 0, pulled.stderr
    entry = Store(there / "home", ollama_dir=False).get(name)
    assert sha256_file(entry.path) == SMOL_SHA == entry.sha256
    assert entry.path.stat().st_size == smollm2_gguf.stat().st_size
    assert (entry.registry or {})["manifest_digest"] == digest

    dx = start_dx(there, engine=engine_binary(request), model=name)  # auth on
    try:
        oll = dx.ollama(timeout=None)
        out = oll.generate(model=name, prompt="The capital of France is", raw=True,
                           options={"num_predict": 6, "temperature": 0})
        assert out.done and out.response.strip(), out
    finally:
        dx.stop()


def test_api_push_with_the_ollama_client_streams_ollamas_status_lines(
    tmp_path: Path, oci_registry: OCIRegistry, smollm2_gguf: Path
) -> None:
    Store(tmp_path / "home", ollama_dir=False).import_file(smollm2_gguf, "smol")
    dx = start_dx(tmp_path)  # auth on
    repo = f"dxtest/apipush{os.getpid()}"
    name = f"{oci_registry.host}/{repo}:v1"
    try:
        oll = dx.ollama(timeout=None)
        oll.copy("smol", name)  # Ollama's flow: name the model as its destination, then push it
        events = list(oll.push(name, insecure=True, stream=True))
        statuses = [e.status for e in events]
        assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
        model = [e for e in events if e.digest == f"sha256:{SMOL_SHA}"]
        assert model and model[0].status == f"pushing {SMOL_SHA[:12]}"
        assert model[-1].completed == model[-1].total == smollm2_gguf.stat().st_size
        raw, digest = oci_registry.manifest(repo, "v1")
        assert digest == "sha256:" + hashlib.sha256(raw).hexdigest()
        # again, not streamed: nothing to send, one answer
        again = oll.push(name, insecure=True, stream=False)
        assert again.status == "success"
        # without the key: refused before anything reaches the registry
        with pytest.raises(ollama.ResponseError) as ei:
            ollama.Client(host=dx.url).push(name, insecure=True, stream=False)
        assert ei.value.status_code == 401
        # and pulled back through /api/pull with insecure, into the same server's store under another name
        back = f"{oci_registry.host}/{repo}:v1"
        oll.delete(back)
        assert [e.status for e in oll.pull(back, insecure=True, stream=True)][-1] == "success"
        assert any(m.model == back for m in oll.list().models)
    finally:
        dx.stop()


def _post(url: str, path: str, body: object, headers: dict[str, str]) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read().splitlines()[-1])
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_api_push_errors_are_ollamas_shape_with_the_right_status(
    tmp_path: Path, oci_registry: OCIRegistry, smollm2_gguf: Path
) -> None:
    Store(tmp_path / "home", ollama_dir=False).import_file(smollm2_gguf, "127.0.0.1:9/dxtest/unreach:v1")
    dx = start_dx(tmp_path)
    try:
        cases = [
            ({"model": f"{oci_registry.host}/dxtest/none:v1", "insecure": True}, 404, "no model named"),
            ({"model": "a/b/c/d/e:x", "insecure": True}, 400, "invalid"),
            ({"model": "127.0.0.1:9/dxtest/unreach:v1", "insecure": True}, 502, "127.0.0.1:9"),
            ({}, 400, "model is required"),
            ({"model": "x", "insecure": "yes"}, 400, "insecure must be true or false"),
            ({"model": "x", "stream": 1}, 400, "stream must be true or false"),
            (b"{not json", 400, ""),
        ]
        for body, status, words in cases:
            got, doc = _post(dx.url, "/api/push", body, dx.headers)
            assert got == status, (body, got, doc)
            assert list(doc) == ["error"] and isinstance(doc["error"], str) and words in doc["error"], doc
            assert str(tmp_path) not in doc["error"] and "\n" not in doc["error"]
    finally:
        dx.stop()
