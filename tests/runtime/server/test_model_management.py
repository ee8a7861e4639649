"""Managing what `list` shows: copy, show, delete and pull of every listed model, the one inside a minted
executable included, through the real `ollama` client with auth on; pull without the network; pull
failures as 4xx/502, never 500; and no server path in any error a client sees.

The minted executable is faked cheaply and faithfully: fake runtime bytes + the real SmolLM2 + the real
trailer writer (``dxverify.trailer.write_executable``), served through ``DX_SELF_EXECUTABLE`` as a
compiled ``dx`` finds itself. Everything lives under a folder with a distinctive name, so a test can
assert that name never reaches a client.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from support.fake_minted import fake_minted
from support.gguf_handcraft import tiny_model
from support.ollama_registry_server import FakeRegistry
from support.ollama_tree import make_ollama_tree
from support.serve_harness import DXServer, engine_binary, start_dx
from support.tiny_reranker import write_tiny_reranker

from dx.models.catalog import Store
from dxverify import trailer

pytestmark = pytest.mark.integration

SECRET = "DXSECRETDIR"  # the distinctive folder name that must never reach a client
FAST = {"num_predict": 4, "temperature": 0, "seed": 7}


def mint_like(tmp: Path, gguf: Path, name: str) -> Path:
    """A file laid out like a minted executable (fake runtime bytes + the real GGUF + the real trailer)."""
    return fake_minted(tmp / name, gguf)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Bodies:
    """Every response body a test saw, to check none names a server path."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def post(self, dx: DXServer, path: str, doc: dict[str, Any], method: str = "POST") -> httpx.Response:
        r = httpx.request(method, f"{dx.url}{path}", headers=dx.headers, json=doc, timeout=120)
        if r.status_code >= 400 or '"error"' in r.text:  # an error, or a stream that ended in one
            self.seen.append(f"{method} {path} {r.status_code} {r.text}")
        return r


@pytest.fixture(scope="module")
def world(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Two servers of one minted-like executable: one with a loopback registry (it lacks every model asked
    for), one whose registry cannot be reached. The first also has store models, an Ollama store, and
    models broken in every way a client could run into."""
    engine = engine_binary(request)
    tmp = tmp_path_factory.mktemp(SECRET)
    exe = mint_like(tmp, smollm2_gguf, "dx-smollm2-cpu-linux-x86_64")
    registry = FakeRegistry().start()

    home = tmp / "a" / "home"
    store = Store(root=home, ollama_dir=False)
    store.import_file(smollm2_gguf, "storemodel")
    store.import_file(smollm2_gguf, "regmodel", source="registry:registry.ollama.ai/library/regmodel:latest")
    unloadable = tmp / "unloadable.gguf"
    unloadable.write_bytes(tiny_model().build().data)  # DX's verifier accepts it; llama-server cannot load it
    store.import_file(unloadable, "unloadable")
    corrupt = store.import_file(write_tiny_reranker(tmp / "c.gguf", seed=5), "corrupt")
    with open(corrupt.path, "r+b") as f:  # a byte flipped in the blob after it was verified
        f.seek(-10, 2)
        b = f.read(1)
        f.seek(-10, 2)
        f.write(bytes([b[0] ^ 0xFF]))
    em = trailer.read_trailer(exe)
    gone_exe = mint_like(tmp, smollm2_gguf, "dx-gone")
    store.name_in_place("gone", gone_exe, em.offset, em.length, em.sha256, source="copy:smollm2")
    gone_exe.unlink()  # the executable a copy was made from moved away
    changed_exe = mint_like(tmp, smollm2_gguf, "dx-changed")
    store.name_in_place("changed", changed_exe, em.offset, em.length, em.sha256, source="copy:smollm2")
    with open(changed_exe, "r+b") as f:  # and another one was altered
        f.seek(em.offset + em.length - 100)
        f.write(b"\x00\x01\x02")
    (home / "models" / "manifests" / "broken%3Alatest.json").write_text("{not json")
    make_ollama_tree(home / "no-ollama", smollm2_gguf)

    one = start_dx(tmp / "a", "--ctx", "512", engine=engine,
                   env={"DX_SELF_EXECUTABLE": str(exe), "DX_OLLAMA_REGISTRY": registry.url})
    two = start_dx(tmp / "b", engine=engine, env={"DX_SELF_EXECUTABLE": str(exe),
                                                  "DX_OLLAMA_REGISTRY": f"http://127.0.0.1:{closed_port()}"})
    Store(root=tmp / "b" / "home", ollama_dir=False).import_file(
        smollm2_gguf, "regmodel", source="registry:registry.ollama.ai/library/regmodel:latest")
    yield {"one": one, "two": two, "exe": exe, "home": home, "bodies": Bodies(), "registry": registry}
    one.stop()
    two.stop()
    registry.stop()


@pytest.fixture(scope="module")
def oll(world: dict) -> ollama.Client:
    dx = world["one"]
    return dx.ollama(timeout=120)


def names(client: ollama.Client) -> set[str]:
    return {m.model for m in client.list().models}


# ------------------------------------------------------------------ copy / show / delete
def test_copy_of_the_embedded_model_is_a_new_name_for_the_same_bytes(world: dict, oll: ollama.Client) -> None:
    assert "smollm2" in names(oll)
    blobs_before = set((world["home"] / "models" / "blobs").iterdir())
    oll.copy("smollm2", "mine/smol:v1")
    assert "mine/smol:v1" in names(oll)
    manifest = json.loads((world["home"] / "models" / "manifests" / "mine%2Fsmol%3Av1.json").read_text())
    em = trailer.read_trailer(world["exe"])
    assert manifest["in_file"] == {"path": str(world["exe"].resolve()), "offset": em.offset, "length": em.length}
    assert manifest["digest"] == f"sha256:{em.sha256}"
    assert set((world["home"] / "models" / "blobs").iterdir()) == blobs_before  # no byte copied
    shown = oll.show("mine/smol:v1")
    assert shown.details.family == "llama"
    r = oll.chat(model="mine/smol:v1", messages=[{"role": "user", "content": "Hi"}], options=FAST)
    assert r.message.content is not None and r.done
    oll.copy("mine/smol:v1", "again")  # a copy of a copy stays in place
    again = json.loads((world["home"] / "models" / "manifests" / "again%3Alatest.json").read_text())
    assert again["in_file"] == manifest["in_file"]
    oll.delete("mine/smol:v1")
    oll.delete("again")
    assert not {"mine/smol:v1", "again:latest"} & names(oll)
    with pytest.raises(ollama.ResponseError) as e:
        oll.show("mine/smol:v1")
    assert e.value.status_code == 404
    assert world["exe"].is_file()  # deleting a copy never touches the executable


def test_copy_under_ollamas_short_name(oll: ollama.Client) -> None:
    oll.copy("smollm2:latest", "short")
    assert "short:latest" in names(oll)
    oll.show("short:latest")
    oll.delete("short")  # `short` is `short:latest`
    assert "short:latest" not in names(oll)


def test_store_models_copy_and_delete(world: dict, oll: ollama.Client) -> None:
    oll.copy("storemodel", "storecopy")
    manifest = json.loads((world["home"] / "models" / "manifests" / "storecopy%3Alatest.json").read_text())
    assert "in_file" not in manifest  # a blob of the store: a second manifest for it
    assert oll.show("storecopy").details.family == "llama"
    oll.delete("storecopy")
    assert "storecopy:latest" not in names(oll)
    assert oll.show("storemodel")  # the blob stayed with its other name


def test_the_served_model_cannot_be_deleted_or_overwritten(oll: ollama.Client) -> None:
    for call in (lambda: oll.delete("smollm2"), lambda: oll.delete("smollm2:latest"),
                 lambda: oll.copy("storemodel", "smollm2")):
        with pytest.raises(ollama.ResponseError) as e:
            call()
        assert e.value.status_code == 409, e.value
        assert "started with" in e.value.error


def test_a_store_model_served_by_its_short_name_cannot_be_deleted_by_it(
    request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path: Path,
) -> None:
    """`dx serve served` serves `served:latest`: deleting `served` (the same model, untagged) is the 409 too,
    and the list stays whole (it once deleted the blob under the server, and /api/tags answered 500)."""
    Store(root=tmp_path / "home", ollama_dir=False).import_file(smollm2_gguf, "served")
    dx = start_dx(tmp_path, "--no-preload", engine=engine_binary(request), model="served")
    try:
        client = dx.ollama(timeout=60)
        for name in ("served", "served:latest"):
            with pytest.raises(ollama.ResponseError) as e:
                client.delete(name)
            assert e.value.status_code == 409 and "started with" in e.value.error
        assert "served:latest" in names(client)
        assert client.show("served").details.family == "llama"
    finally:
        dx.stop()


def test_unknown_names_are_404_and_bad_names_400(world: dict) -> None:
    dx, bodies = world["one"], world["bodies"]
    r = bodies.post(dx, "/api/copy", {"source": "nope", "destination": "x"})
    assert r.status_code == 404 and r.json() == {"error": "model 'nope' not found"}
    r = bodies.post(dx, "/api/delete", {"model": "nope"}, method="DELETE")
    assert r.status_code == 404 and r.json() == {"error": "model 'nope' not found"}
    assert bodies.post(dx, "/api/show", {"model": "nope"}).status_code == 404
    assert bodies.post(dx, "/api/copy", {"source": "smollm2", "destination": "../x"}).status_code == 400
    assert bodies.post(dx, "/api/copy", {"source": "/etc/passwd", "destination": "x"}).status_code == 400


# ------------------------------------------------------------------ pull
def test_pull_of_what_dx_has_succeeds_without_the_network(world: dict, oll: ollama.Client) -> None:
    registry: FakeRegistry = world["registry"]
    asked = len(registry.registry_log)
    for name in ("smollm2", "smollm2:latest", "storemodel"):
        assert oll.pull(name).status == "success"
        lines = list(oll.pull(name, stream=True))
        assert lines[0].status == "pulling manifest" and lines[-1].status == "success"
        assert any(ln.total and ln.completed == ln.total for ln in lines)
    assert len(registry.registry_log) == asked  # nothing asked of the registry


def test_pull_of_a_registry_model_falls_back_to_the_copy_here_when_the_registry_is_down(world: dict) -> None:
    two: DXServer = world["two"]
    client = two.ollama(timeout=60)
    lines = list(client.pull("regmodel", stream=True))
    assert lines[-1].status == "success"
    assert any("cannot be reached" in (ln.status or "") for ln in lines)
    assert client.pull("smollm2", stream=False).status == "success"


def test_pull_failures_are_4xx_or_502_in_ollamas_shape(world: dict) -> None:
    one, two, bodies = world["one"], world["two"], world["bodies"]
    for stream in (False, True):
        r = bodies.post(one, "/api/pull", {"model": "nosuch", "stream": stream})
        assert r.status_code == 404, r.text
        assert r.json()["error"].startswith("pull model manifest: file does not exist")
        r = bodies.post(two, "/api/pull", {"model": "nosuch", "stream": stream})
        assert r.status_code == 502, r.text
        assert "\n" not in r.json()["error"] and "nosuch" in r.json()["error"]
        for bad in ("a/b/c/d/e", "../x", "/etc/passwd", "x:", "hf:not-a-file"):
            r = bodies.post(one, "/api/pull", {"model": bad, "stream": stream})
            assert r.status_code == 400, (bad, r.text)
    client = two.ollama(timeout=60)
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("nosuch")
    assert e.value.status_code == 502


# ------------------------------------------------------------------ no server path, ever
def test_no_server_path_in_any_error_a_client_sees(world: dict) -> None:
    one, bodies = world["one"], world["bodies"]
    expect = {
        "gone": 404,        # copied from an executable that moved away
        "changed": 500,     # copied from an executable that was altered since
        "corrupt": 500,     # a store blob changed after it was verified
        "unloadable": 500,  # verified, but the engine cannot load it
        "broken": 500,      # a manifest that is not JSON
        "nope": 404,
    }
    pulled = {"gone": 404, "changed": 409, "corrupt": 409, "unloadable": 200,
              "broken": 404, "nope": 404}  # broken, nope: the registry is asked, and has neither
    for name, status in expect.items():
        r = bodies.post(one, "/api/chat", {"model": name, "messages": [{"role": "user", "content": "hi"}],
                                           "stream": False, "options": FAST})
        # "corrupt" is a reranker (an encoder): /api/chat refuses it as Ollama does before any engine loads it
        assert r.status_code == (400 if name == "corrupt" else status), (name, r.text)
        assert name in r.json()["error"], (name, r.text)  # the model is named, not its file
        r = bodies.post(one, "/v1/chat/completions", {"model": name, "max_tokens": 2,
                                                      "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == status and name in r.json()["error"]["message"], (name, r.text)
        bodies.post(one, "/api/show", {"model": name})
        bodies.post(one, "/api/embed", {"model": name, "input": "hi"})
        bodies.post(one, "/api/generate", {"model": name, "prompt": "hi", "stream": True, "options": FAST})
        bodies.post(one, "/api/rerank", {"model": name, "query": "q", "documents": ["d"]})
        bodies.post(one, "/api/copy", {"source": name, "destination": f"{name}-copy"})
        r = bodies.post(one, "/api/pull", {"model": name, "stream": False})
        assert r.status_code == pulled[name], (name, r.text)  # never a 500, never a success for lost bytes
    r = bodies.post(one, "/api/delete", {"model": "smollm2:135m"}, method="DELETE")  # Ollama's own store
    assert r.status_code == 403, r.text
    bodies.post(one, "/api/delete", {"model": "smollm2"}, method="DELETE")
    r = bodies.post(one, "/api/delete", {"model": "gone"}, method="DELETE")
    assert r.status_code == 200  # a copy whose bytes went away can still be deleted
    seen = "\n".join(bodies.seen)
    assert len(bodies.seen) > 30
    assert SECRET not in seen, [b for b in bodies.seen if SECRET in b][:3]
    assert " 500 " in seen  # the 5xx above are the server's own troubles (bytes gone bad), not a client's
