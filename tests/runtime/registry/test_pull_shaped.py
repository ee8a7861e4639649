"""Pulling a shaped model (adapter, draft or messages layers) from a REAL registry, and from Ollama's store.

Published on Debian's docker-registry with plain uploads written here (tests/support/oci_registry.py), as
Ollama's create and push lay a model out, not by DX's push: the adapter and draft blobs are verified by digest
and checked against the model (``dxverify.adapter``, ``dxverify.spec_pair``) before they enter the store;
one made for another model is refused with one line and nothing is stored. The pulled model carries a
``modelfile`` record, so it serves with ``--lora``, its MESSAGEs go first and ``show --modelfile`` lists them.
No engine here: tests/runtime/server/test_push_shaped.py serves one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from support.oci_registry import CONFIG_TYPE, MANIFEST_TYPE, OCIRegistry, media
from support.tiny_lora import write_tiny_lora

from dx.errors import DownloadError
from dx.models.adapters import adapter_digests, adapters_for
from dx.models.catalog import Store
from dx.models.defaults import for_source
from dx.models.pull import pull_by_name, pull_registry
from dx.models.push import push_model
from dx.models.source import ModelSource
from dx.server.ollama_wire import show_modelfile
from dxverify.errors import MalformedInputError

SMOL_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MESSAGES = [{"role": "user", "content": "Say <hi>"}, {"role": "assistant", "content": "hi & bye"}]


def go_json(value: object) -> bytes:
    """What Go's json.Encoder writes for Ollama's []api.Message: fields in order, HTML escaped, a newline."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") + "\n").encode()


def publish(registry: OCIRegistry, repo: str, layers: list[tuple[str, bytes | Path]]) -> list[dict]:
    """Upload each (kind, bytes or file) layer and a manifest naming them as ``repo:v1``; the layer descriptors."""
    descs = [{"mediaType": media(kind), **registry.put_blob(repo, data)} for kind, data in layers]
    config = json.dumps({"model_format": "gguf", "model_family": "llama", "requires": "0.12.0",
                         "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descs]}}).encode()
    doc = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
           "config": {"mediaType": CONFIG_TYPE, **registry.put_blob(repo, config)}, "layers": descs}
    status, _, body = registry.request("PUT", f"/v2/{repo}/manifests/v1", json.dumps(doc).encode(),
                                       {"Content-Type": MANIFEST_TYPE})
    assert status == 201, body
    return descs


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("DX_HOME", str(tmp_path / "dxhome"))  # adapters_for/for_source find the store by it
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-ollama"))
    monkeypatch.delenv("DX_OLLAMA_REGISTRY", raising=False)
    monkeypatch.delenv("DX_OLLAMA_TOKEN", raising=False)
    return Store(tmp_path / "dxhome", ollama_dir=False)


def _source(store: Store, name: str) -> ModelSource:
    e = store.get(name)
    return ModelSource(e.path, name=e.name, sha256=e.sha256)


def test_an_ollama_made_model_with_an_adapter_a_draft_and_messages_comes_whole(
    store: Store, oci_registry: OCIRegistry, smollm2_gguf: Path, tmp_path: Path
) -> None:
    lora = write_tiny_lora(tmp_path / "lora.gguf")
    lora_sha = hashlib.sha256(lora.read_bytes()).hexdigest()
    repo = f"dxtest/ollamamade{os.getpid()}"
    descs = publish(oci_registry, repo, [("model", smollm2_gguf), ("adapter", lora), ("draft", smollm2_gguf),
                                         ("system", b"Be brief."), ("params", b'{"temperature":0.2}\n'),
                                         ("messages", go_json(MESSAGES))])
    name = f"{oci_registry.host}/{repo}:v1"
    entry = pull_registry(store, name, insecure=True, progress=lambda *a: None)
    rec = entry.modelfile
    assert rec is not None and entry.source == f"registry:{name}"
    assert rec["adapters"] == [f"sha256:{lora_sha}"] and rec["draft"] == f"sha256:{SMOL_SHA}"
    assert rec["messages"] == MESSAGES and rec["system"] == "Be brief." and rec["requires"] == "0.12.0"
    assert sorted(p.name for p in store.blobs.iterdir()) == sorted([f"sha256-{SMOL_SHA}", f"sha256-{lora_sha}"])
    src = _source(store, name)
    assert adapters_for(src) == [store.blobs / f"sha256-{lora_sha}"]  # served with --lora
    defaults = for_source(src)
    assert list(defaults.messages) == MESSAGES and defaults.params == {"temperature": 0.2}
    assert defaults.draft == str(store.blobs / f"sha256-{SMOL_SHA}")
    for line in (f"ADAPTER sha256:{lora_sha}", f"DRAFT sha256:{SMOL_SHA}", "MESSAGE user", "REQUIRES 0.12.0"):
        assert line in rec["text"], rec["text"]
    # pushed on by DX, every layer keeps its digest (the messages layer in Go's encoding included)
    again = push_model(store, name, f"{oci_registry.host}/{repo}again:v1", insecure=True)
    assert [ly.digest for ly in again.layers] == [d["digest"] for d in descs]


def test_an_adapter_made_for_another_model_is_refused_and_nothing_is_stored(
    store: Store, oci_registry: OCIRegistry, smollm2_gguf: Path, tmp_path: Path
) -> None:
    wrong = write_tiny_lora(tmp_path / "qwen-lora.gguf", arch="qwen2")
    repo = f"dxtest/wronglora{os.getpid()}"
    publish(oci_registry, repo, [("model", smollm2_gguf), ("adapter", wrong)])
    name = f"{oci_registry.host}/{repo}:v1"
    with pytest.raises(MalformedInputError) as ei:
        pull_registry(store, name, insecure=True, progress=lambda *a: None)
    words = str(ei.value)
    assert "the adapter layer sha256:" in words and "qwen2" in words and "\n" not in words and str(tmp_path) not in words, words
    assert not (store.blobs.is_dir() and any(store.blobs.iterdir())) and store.list() == []  # nothing stored
    with pytest.raises(DownloadError):  # through /api/pull's path: the registry's bytes, a 502
        pull_by_name(store, name, insecure=True)
    assert not list((store.downloads / "registry").glob("*.partial"))


def test_a_model_without_shaping_layers_gets_no_record(store: Store, oci_registry: OCIRegistry,
                                                       smollm2_gguf: Path) -> None:
    repo = f"dxtest/plain{os.getpid()}"
    publish(oci_registry, repo, [("model", smollm2_gguf), ("system", b"Be brief.")])
    entry = pull_registry(store, f"{oci_registry.host}/{repo}:v1", insecure=True, progress=lambda *a: None)
    assert entry.modelfile is None and (entry.registry or {})["system"] == "Be brief."


def test_a_model_of_ollamas_store_with_an_adapter_layer(tmp_path: Path, smollm2_gguf: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Served in place, ``show --modelfile`` gives its ADAPTER; pulled into DX's store, the adapter comes too."""
    from support.ollama_tree import make_ollama_tree

    tree = make_ollama_tree(tmp_path / "ollama", smollm2_gguf)
    lora = write_tiny_lora(tmp_path / "tiny-lora.gguf")
    digest = hashlib.sha256(lora.read_bytes()).hexdigest()
    shutil.copyfile(lora, tree / "blobs" / f"sha256-{digest}")
    msgs = go_json(MESSAGES)
    msg_sha = hashlib.sha256(msgs).hexdigest()
    (tree / "blobs" / f"sha256-{msg_sha}").write_bytes(msgs)
    doc = json.loads((tree / "manifests/registry.ollama.ai/library/smollm2/135m").read_text())
    doc["layers"] = [dict(ly, size=smollm2_gguf.stat().st_size) for ly in doc["layers"]
                     if ly["mediaType"].endswith(".model")]
    doc["layers"] += [{"mediaType": media("adapter"), "digest": f"sha256:{digest}", "size": lora.stat().st_size},
                      {"mediaType": media("messages"), "digest": f"sha256:{msg_sha}", "size": len(msgs)}]
    shaped = tree / "manifests/registry.ollama.ai/library/smollora/latest"
    shaped.parent.mkdir(parents=True)
    shaped.write_text(json.dumps(doc))
    monkeypatch.setenv("DX_HOME", str(tmp_path / "dxhome"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tree))
    store = Store(tmp_path / "dxhome", ollama_dir=tree)
    e = store.get("smollora")
    src = ModelSource(e.path, name=e.name, sha256=e.sha256)
    assert adapter_digests(src) == [f"sha256:{digest}"]
    d = for_source(src)
    assert list(d.messages) == MESSAGES
    text = show_modelfile(e.name, "", d.params, d.system, adapter_digests(src), d.messages)
    assert f"ADAPTER sha256:{digest}" in text and 'MESSAGE assistant """hi & bye"""' in text, text
    # `dx pull smollora` with Ollama's copy here: the adapter enters DX's store, checked, and the record names it
    pulled = pull_registry(store, "smollora", name="mine", progress=lambda *a: None)
    assert pulled.modelfile is not None and pulled.modelfile["adapters"] == [f"sha256:{digest}"]
    assert (store.blobs / f"sha256-{digest}").read_bytes() == lora.read_bytes()
    assert adapters_for(_source(store, "mine")) == [store.blobs / f"sha256-{digest}"]


def test_a_created_model_with_a_draft_and_requires_goes_up_and_comes_back(
    store: Store, oci_registry: OCIRegistry, smollm2_gguf: Path, tmp_path: Path
) -> None:
    """DRAFT is Ollama's ``draft`` layer (here the model is its own draft: one blob, listed twice), REQUIRES the
    config's ``requires``; a fresh store gets both back."""
    from dx.models.create import CreateSpec, create
    from dx.models.defaults import ModelDefaults

    base = store.import_file(smollm2_gguf, "bare")
    create(store, CreateSpec(name="drafted", from_="bare", draft=f"sha256:{SMOL_SHA}", requires="0.12.0",
                             params={"draft_num_predict": 4}), base, ModelDefaults(), lambda _s: None)
    repo = f"dxtest/drafted{os.getpid()}"
    pushed = push_model(store, "drafted", f"{oci_registry.host}/{repo}:v1", insecure=True)
    assert [ly.kind for ly in pushed.layers] == ["model", "draft", "params"]
    raw, _ = oci_registry.manifest(repo, "v1")
    config = json.loads(oci_registry.blob(repo, json.loads(raw)["config"]["digest"]))
    assert config["requires"] == "0.12.0"
    fresh = Store(tmp_path / "fresh", ollama_dir=False)
    back = pull_registry(fresh, f"{oci_registry.host}/{repo}:v1", insecure=True, progress=lambda *a: None)
    rec = back.modelfile or {}
    assert rec.get("draft") == f"sha256:{SMOL_SHA}" and rec.get("requires") == "0.12.0"
    assert rec.get("params") == {"draft_num_predict": 4}
    assert [p.name for p in fresh.blobs.iterdir()] == [f"sha256-{SMOL_SHA}"]
