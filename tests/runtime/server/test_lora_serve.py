"""A model with a LoRA adapter, served by the real engine through dx: the engine gets ``--lora``, and the greedy
answer differs from the bare model's on the same server (the tiny random LoRA changes it; tests/runtime/engine/
test_lora_engine.py shows that at scale 0 it would not).

Two ways an adapter comes with a model, one module-scoped server each, both also serving the bare model:
- ``store``: a created model (``dx.models.create``, what ``dx create`` / ``/api/create`` do for a Modelfile's
  ``ADAPTER``) whose ``modelfile["adapters"]`` names the adapter's blob;
- ``embedded``: a file laid out like a minted executable with the adapter as its "adapter" trailer entry (fake
  runtime bytes + the real SmolLM2 + the real trailer writer, served through ``DX_SELF_EXECUTABLE``; no mint).
  The engine gets the adapter extracted once to a verified cache file (its loader cannot read at an offset).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.fake_minted import fake_minted
from support.serve_harness import DXServer, engine_binary, start_dx
from support.tiny_lora import write_tiny_lora

from dx.models.catalog import Store
from dx.models.create import CreateSpec, create
from dx.models.defaults import ModelDefaults

pytestmark = pytest.mark.integration

META = {"model": "smollm2-lora", "source": "test", "tier": "cpu", "dx_version": "0.1.0",
        "llama_cpp_commit": "0" * 40}
GREEDY = {"num_predict": 24, "temperature": 0, "seed": 7}
QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module", params=["store", "embedded"])
def served(request: pytest.FixtureRequest, smollm2_gguf: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, DXServer, str]]:
    """(kind, server, name of the model with the adapter); the server also has ``bare`` (SmolLM2 alone)."""
    tmp = tmp_path_factory.mktemp(f"lora-{request.param}")
    engine = engine_binary(request)
    store = Store(root=tmp / "home", ollama_dir=False)
    bare = store.import_file(smollm2_gguf, "bare", link=True)
    lora = write_tiny_lora(tmp / "tiny-lora.gguf")
    env = None
    if request.param == "store":
        digest = hashlib.sha256(lora.read_bytes()).hexdigest()
        shutil.copyfile(lora, store.blobs / f"sha256-{digest}")
        create(store, CreateSpec(name="shaped", from_="bare", adapters=[f"sha256:{digest}"]), bare, ModelDefaults(),
               lambda _s: None)
        name = "shaped:latest"
    else:
        exe = fake_minted(tmp / "dx-smollm2-lora-cpu-linux-x86_64", smollm2_gguf, META,
                          adapter=(lora, "tiny-lora"))
        env = {"DX_SELF_EXECUTABLE": str(exe)}
        name = ""
    lora.unlink()  # only the copy in the store (or inside the executable) is left
    server = start_dx(tmp, "--ctx", "1024", "--parallel", "1", engine=engine, env=env, timeout=120)
    try:
        if not name:
            names = [m["name"] for m in httpx.get(f"{server.url}/api/tags", headers=server.headers,
                                                  timeout=30).json()["models"]]
            name = next(n for n in names if not n.startswith("bare"))
        yield request.param, server, name
    finally:
        server.stop()


def ask(server: DXServer, model: str) -> str:
    r = httpx.post(f"{server.url}/api/chat", headers=server.headers, timeout=180, json={
        "model": model, "stream": False, "options": GREEDY, "messages": [{"role": "user", "content": QUESTION}]})
    assert r.status_code == 200, r.text
    return r.json()["message"]["content"]


def engine_argv(server: DXServer, model: str) -> str:
    safe = model.replace(":", "_")
    logs = [p for p in (server.home / "logs").glob("engine-*.log") if "-embed" not in p.name and safe in p.name]
    assert logs, sorted(p.name for p in (server.home / "logs").glob("*"))
    return logs[0].read_text(errors="replace").splitlines()[0]


def test_the_adapter_changes_the_answer(served: tuple[str, DXServer, str]) -> None:
    kind, server, name = served
    shaped, bare = ask(server, name), ask(server, "bare")
    assert shaped != bare, (shaped, bare)
    argv = engine_argv(server, name)
    assert " --lora " in argv, argv
    lora = argv.split(" --lora ", 1)[1].split(" ", 1)[0]
    if kind == "embedded":  # the verified extract, not the executable
        assert "/cache/adapters/sha256-" in lora and lora.endswith(".gguf"), argv
    else:
        assert "/models/blobs/sha256-" in lora, argv
    assert " --lora " not in engine_argv(server, "bare")


def test_a_missing_adapter_is_one_line_not_a_bare_answer(served: tuple[str, DXServer, str]) -> None:
    """A store model whose adapter blob is gone is not served without it: one line, no server path."""
    _, server, _ = served
    store = Store(root=server.home, ollama_dir=False)
    bare = store.get("bare")
    store.name_modelfile("lost", bare, "create:bare", {"from": "bare", "base": f"sha256:{bare.sha256}",
                                                       "adapters": [f"sha256:{'ef' * 32}"]})
    r = httpx.post(f"{server.url}/api/chat", headers=server.headers, timeout=60, json={
        "model": "lost", "stream": False, "options": GREEDY, "messages": [{"role": "user", "content": QUESTION}]})
    assert r.status_code == 500, r.text  # the store is damaged: the server's trouble, not the client's
    error = r.json()["error"]
    assert f"its adapter blob sha256:{'ef' * 32} is gone from the store" in error and str(server.home) not in error, error


def test_embeddings_come_from_the_adapted_model(served: tuple[str, DXServer, str]) -> None:
    """The embeddings engine gets the adapter too (Ollama serves both from one runner with it)."""
    _, server, name = served

    def embed(model: str) -> list[float]:
        r = httpx.post(f"{server.url}/api/embed", headers=server.headers, timeout=120,
                       json={"model": model, "input": QUESTION})
        assert r.status_code == 200, r.text
        return r.json()["embeddings"][0]

    shaped, bare = embed(name), embed("bare")
    assert len(shaped) == len(bare) == 576 and shaped != bare
