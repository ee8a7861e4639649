"""A created model travels through a REAL registry whole: `dx create` → `dx push` → a fresh DX_HOME `dx pull`s it.

The Modelfile has SYSTEM, PARAMETER stop/temperature, MESSAGEs, a LICENSE and an ADAPTER (the tiny random
LoRA of tests/support/tiny_lora.py, which measurably changes SmolLM2's greedy answer: tests/runtime/server/
test_lora_serve.py). The registry is Debian's docker-registry (distribution 2.8) on loopback (the session
fixture ``oci_registry``; a second one with the registry's own "silly" auth for the 401 case); the CLI,
the server, the engine, SmolLM2 and the `ollama` Python client are the real ones.

What must hold after the round trip: the registry holds Ollama's layers (model, adapter, system, license,
params, messages), the pulled model's ``dx show --modelfile`` is the original's but for its FROM lines, its
blobs are byte-identical, and it gives the same greedy answer as the original — which is not the bare
model's, so the adapter came along and is applied.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support.oci_registry import OCIRegistry, start_registry
from support.serve_harness import DXServer, dx_env, engine_binary, start_dx
from support.tiny_lora import write_tiny_lora

from dx.models.catalog import Store
from dxverify.hashing import sha256_file

pytestmark = pytest.mark.integration

SMOL_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GREEDY = {"num_predict": 24, "temperature": 0, "seed": 7}
QUESTION = "What is the capital of France? Answer in one word."
MODELFILE = (
    "FROM ./smol.gguf\n"
    "ADAPTER ./lora.gguf\n"
    'SYSTEM """You are a terse geography tutor."""\n'
    "PARAMETER temperature 0\nPARAMETER stop <|im_end|>\nPARAMETER stop END\n"
    "MESSAGE user Capital of Spain?\nMESSAGE assistant Madrid.\n"
    "LICENSE Apache-2.0\n"
)


def _dx(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dx_env(home, None)
    env.pop("DX_OLLAMA_REGISTRY", None)
    return subprocess.run([sys.executable, "-m", "dx", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def _body(modelfile: str) -> list[str]:
    """A ``dx show --modelfile`` text without the lines that name the model (FROM, and the comment about it)."""
    return [ln for ln in modelfile.splitlines() if not ln.startswith(("FROM ", "# FROM "))]


@pytest.fixture(scope="module")
def trip(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, oci_registry: OCIRegistry) -> dict:
    """Created in home A, pushed by the CLI, pulled by the CLI into a fresh home B."""
    tmp = tmp_path_factory.mktemp("push-shaped")
    a, b = tmp / "a" / "home", tmp / "b" / "home"
    os.symlink(smollm2_gguf, tmp / "smol.gguf")
    lora = write_tiny_lora(tmp / "lora.gguf")
    (tmp / "Modelfile").write_text(MODELFILE)
    made = _dx(a, "create", "shaped", "-f", str(tmp / "Modelfile"))
    assert made.returncode == 0, made.stderr
    repo = f"dxtest/shaped{os.getpid()}"
    name = f"{oci_registry.host}/{repo}:v1"
    pushed = _dx(a, "push", "shaped", name, "--insecure")
    assert pushed.returncode == 0, pushed.stderr
    pulled = _dx(b, "pull", name, "--insecure")
    assert pulled.returncode == 0, pulled.stderr
    return {"tmp": tmp, "a": a, "b": b, "repo": repo, "name": name, "pushed": pushed, "pulled": pulled,
            "lora_sha": sha256_file(lora), "digest": pushed.stdout.split()[0].split("@")[1]}


def test_the_registry_holds_ollamas_layers_for_every_modelfile_part(trip: dict, oci_registry: OCIRegistry) -> None:
    raw, digest = oci_registry.manifest(trip["repo"], "v1")
    assert digest == trip["digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    layers = json.loads(raw)["layers"]
    kinds = [ly["mediaType"].removeprefix("application/vnd.ollama.image.") for ly in layers]
    assert kinds == ["model", "adapter", "system", "license", "params", "messages"], kinds
    by = {k: ly for k, ly in zip(kinds, layers, strict=True)}
    assert by["model"]["digest"] == f"sha256:{SMOL_SHA}"
    assert by["adapter"]["digest"] == f"sha256:{trip['lora_sha']}"
    blob = lambda kind: oci_registry.blob(trip["repo"], by[kind]["digest"])  # noqa: E731
    assert blob("system") == b"You are a terse geography tutor."
    assert blob("license") == b"Apache-2.0"
    assert json.loads(blob("params")) == {"stop": ["<|im_end|>", "END"], "temperature": 0.0}
    assert json.loads(blob("messages")) == [{"role": "user", "content": "Capital of Spain?"},
                                            {"role": "assistant", "content": "Madrid."}]


def test_the_pulled_model_shows_the_same_modelfile_and_has_byte_identical_blobs(trip: dict) -> None:
    original = _dx(trip["a"], "show", "shaped", "--modelfile")
    pulled = _dx(trip["b"], "show", trip["name"], "--modelfile")
    assert original.returncode == 0 and pulled.returncode == 0, (original.stderr, pulled.stderr)
    assert f"ADAPTER sha256:{trip['lora_sha']}" in pulled.stdout and "MESSAGE assistant Madrid." in pulled.stdout
    assert _body(pulled.stdout) == _body(original.stdout), (original.stdout, pulled.stdout)
    assert f"FROM {trip['name']}" in pulled.stdout
    blobs_a = {p.name: sha256_file(p) for p in (trip["a"] / "models" / "blobs").iterdir()}
    blobs_b = {p.name: sha256_file(p) for p in (trip["b"] / "models" / "blobs").iterdir()}
    assert blobs_b == blobs_a == {f"sha256-{SMOL_SHA}": SMOL_SHA, f"sha256-{trip['lora_sha']}": trip["lora_sha"]}
    assert "does not use it" not in trip["pulled"].stderr, trip["pulled"].stderr  # the old note is gone


def _ask(server: DXServer, model: str) -> str:
    r = httpx.post(f"{server.url}/api/chat", headers=server.headers, timeout=180, json={
        "model": model, "stream": False, "options": GREEDY, "messages": [{"role": "user", "content": QUESTION}]})
    assert r.status_code == 200, r.text
    return r.json()["message"]["content"]


def _argv(server: DXServer, model: str) -> str:
    safe = model.replace(":", "_").replace("/", "_")
    logs = [p for p in (server.home / "logs").glob("engine-*.log") if "-embed" not in p.name]
    lines = [p.read_text(errors="replace").splitlines()[0] for p in logs]
    assert lines, sorted(p.name for p in (server.home / "logs").glob("*"))
    return next((ln for p, ln in zip(logs, lines, strict=True) if safe in p.name), lines[0])


def test_the_pulled_model_serves_the_originals_greedy_answer_with_its_adapter(
    trip: dict, request: pytest.FixtureRequest
) -> None:
    engine = engine_binary(request)
    Store(trip["b"], ollama_dir=False).name_blob("bare", SMOL_SHA, "test")  # SmolLM2 alone, for comparison
    there = start_dx(trip["b"].parent, "--ctx", "1024", "--parallel", "1", engine=engine, timeout=120)
    try:
        pulled, bare = _ask(there, trip["name"]), _ask(there, "bare")
        argv = _argv(there, trip["name"])
        show = httpx.post(f"{there.url}/api/show", headers=there.headers, json={"model": trip["name"]},
                          timeout=30).json()
    finally:
        there.stop()
    assert " --lora " in argv and f"sha256-{trip['lora_sha']}" in argv, argv
    assert pulled != bare, (pulled, bare)  # the adapter is applied (and the MESSAGEs/SYSTEM went first)
    assert show["messages"] == [{"role": "user", "content": "Capital of Spain?"},
                                {"role": "assistant", "content": "Madrid."}]
    assert show["system"] == "You are a terse geography tutor." and show["license"] == "Apache-2.0"
    assert f"ADAPTER sha256:{trip['lora_sha']}" in show["modelfile"]
    here = start_dx(trip["a"].parent, "--ctx", "1024", "--parallel", "1", engine=engine, timeout=120)
    try:
        original = _ask(here, "shaped")
    finally:
        here.stop()
    assert pulled == original, (pulled, original)


def test_api_push_through_the_ollama_client_gives_the_same_manifest(trip: dict, oci_registry: OCIRegistry) -> None:
    """/api/push of the created model (Ollama's flow: copy to the destination name, push) pins the same digest
    as `dx push`: the layers and the config are the same bytes."""
    dx = start_dx(trip["a"].parent)  # auth on, no engine needed
    repo = f"dxtest/shapedapi{os.getpid()}"
    name = f"{oci_registry.host}/{repo}:v1"
    try:
        oll = dx.ollama(timeout=None)
        oll.copy("shaped", name)
        events = list(oll.push(name, insecure=True, stream=True))
    finally:
        dx.stop()
    assert [e.status for e in events][-1] == "success"
    assert any(e.digest == f"sha256:{trip['lora_sha']}" for e in events)
    assert oci_registry.manifest(repo, "v1")[1] == trip["digest"]


def test_a_pulled_shaped_model_pushed_again_keeps_every_digest(trip: dict, oci_registry: OCIRegistry) -> None:
    repo = f"dxtest/shapedagain{os.getpid()}"
    again = _dx(trip["b"], "push", trip["name"], f"{oci_registry.host}/{repo}:v2", "--insecure")
    assert again.returncode == 0, again.stderr
    assert oci_registry.manifest(repo, "v2")[1] == trip["digest"]
    fresh = _dx(trip["tmp"] / "c" / "home", "pull", f"{oci_registry.host}/{repo}:v2", "--insecure")
    assert fresh.returncode == 0, fresh.stderr
    shown = _dx(trip["tmp"] / "c" / "home", "show", f"{oci_registry.host}/{repo}:v2", "--modelfile")
    assert _body(shown.stdout) == _body(_dx(trip["a"], "show", "shaped", "--modelfile").stdout)


def test_push_errors_are_one_line(trip: dict, oci_registry: OCIRegistry, tmp_path: Path) -> None:
    missing = _dx(trip["a"], "push", "nosuch", f"{oci_registry.host}/dxtest/nosuch:v1", "--insecure")
    unreachable = _dx(trip["a"], "push", "shaped", "127.0.0.1:9/dxtest/unreach:v1", "--insecure")
    locked = start_registry(tmp_path / "locked", auth=True)
    try:
        refused = _dx(trip["a"], "push", "shaped", f"{locked.host}/dxtest/locked:v1", "--insecure")
    finally:
        locked.stop()
    for r, words in [(missing, "nosuch"), (unreachable, "127.0.0.1:9"), (refused, "HTTP 401")]:
        assert r.returncode != 0 and words in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len([ln for ln in r.stderr.splitlines() if ln.strip()]) <= 2, r.stderr


def test_api_push_errors_are_ollamas_shape(trip: dict, oci_registry: OCIRegistry, tmp_path: Path) -> None:
    locked = start_registry(tmp_path / "locked", auth=True)
    dx = start_dx(trip["a"].parent)
    try:
        store = Store(trip["a"], ollama_dir=False)
        store.copy("shaped", f"{locked.host}/dxtest/locked:v1")
        cases = [({"model": f"{oci_registry.host}/dxtest/nosuch:v1", "insecure": True}, 404, "nosuch"),
                 ({"model": f"{locked.host}/dxtest/locked:v1", "insecure": True}, 502, "HTTP 401")]
        for body, status, words in cases:
            r = httpx.post(f"{dx.url}/api/push", headers=dx.headers, json=body, timeout=60)
            assert r.status_code == status, (body, r.status_code, r.text)
            doc = r.json()
            assert list(doc) == ["error"] and words in doc["error"] and "\n" not in doc["error"], doc
            assert str(tmp_path) not in doc["error"] and str(trip["tmp"]) not in doc["error"], doc
        store.delete(f"{locked.host}/dxtest/locked:v1")
    finally:
        dx.stop()
        locked.stop()
