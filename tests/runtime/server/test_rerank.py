"""Reranking through DX: /api/rerank and /v1/rerank on the real engine (``llama-server --rerank``).

No reranker GGUF is downloadable here, so the model is a tiny real BERT cross-encoder
made by ``support.tiny_reranker`` (rank pooling + classifier head, random weights):
the engine loads and runs it, so counts, shapes, order and indices are real; the
scores mean nothing. SmolLM2 is the model that is not a reranker.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support.serve_harness import DXServer, engine_binary, start_dx
from support.tiny_reranker import write_tiny_reranker

from dx.errors import BadRequest
from dx.models.source import ModelSource
from dx.server.rerank import is_reranker, rerank_answer, rerank_request

RERANKER = "tiny-reranker:latest"
QUERY = "why is the sky blue"
DOCS = ["the sky is blue because of rayleigh scattering", "paris capital of france", "cats and dogs",
        "music piano"]


# ------------------------------------------------------------------ units: pure mapping
def test_request_mapping_takes_strings_and_text_objects() -> None:
    q, texts, top_n, ret = rerank_request({"query": "q", "documents": ["a", {"text": "b"}], "top_n": 1,
                                           "return_documents": True})
    assert (q, texts, top_n, ret) == ("q", ["a", "b"], 1, True)
    assert rerank_request({"query": "q", "documents": ["a"]})[2:] == (None, False)


@pytest.mark.parametrize("doc, field", [
    ({"documents": ["a"]}, "query"),
    ({"query": "", "documents": ["a"]}, "query"),
    ({"query": "q"}, "documents"),
    ({"query": "q", "documents": []}, "documents"),
    ({"query": "q", "documents": ["a", 3]}, "documents\\[1\\]"),
    ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
    ({"query": "q", "documents": ["a"], "top_n": True}, "top_n"),
    ({"query": "q", "documents": ["a"], "return_documents": "yes"}, "return_documents"),
])
def test_request_mapping_refuses_each_bad_field(doc: dict, field: str) -> None:
    with pytest.raises(BadRequest, match=field):
        rerank_request(doc)


def test_answer_is_sorted_best_first_cut_to_top_n_with_documents() -> None:
    engine = {"results": [{"index": 0, "relevance_score": 0.1}, {"index": 2, "relevance_score": 0.9},
                          {"index": 1, "relevance_score": 0.5}, {"index": 7, "relevance_score": 5.0}]}
    out = rerank_answer("m", engine, ["a", "b", "c"], 2, True)
    assert out == {"model": "m", "results": [
        {"index": 2, "relevance_score": 0.9, "document": {"text": "c"}},
        {"index": 1, "relevance_score": 0.5, "document": {"text": "b"}},
    ]}  # index 7 is no document of the request: dropped
    assert [r["index"] for r in rerank_answer("m", engine, ["a", "b", "c"], None, False)["results"]] == [2, 1, 0]


def test_reranker_detection_reads_the_gguf(tmp_path: Path, smollm2_gguf: Path) -> None:
    rr = write_tiny_reranker(tmp_path / "rr.gguf")
    emb = write_tiny_reranker(tmp_path / "emb.gguf", pooling_rank=False)
    assert is_reranker(ModelSource(rr))
    assert not is_reranker(ModelSource(emb))  # BERT with mean pooling and no classifier head: an embedder
    assert not is_reranker(ModelSource(smollm2_gguf))


# ------------------------------------------------------------------ the real engine
@pytest.fixture(scope="module")
def dx(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from dx.models.catalog import Store

    engine = engine_binary(request)
    tmp = tmp_path_factory.mktemp("rerank")
    store = Store(root=tmp / "home", ollama_dir=False)
    store.import_file(write_tiny_reranker(tmp / "rr.gguf"), RERANKER)
    store.import_file(smollm2_gguf, "smollm2")
    server = start_dx(tmp, "--ctx", "512", engine=engine, model="smollm2")
    yield server
    server.stop()


@pytest.mark.integration
def test_api_rerank_scores_every_document_best_first(dx: DXServer) -> None:
    r = httpx.post(f"{dx.url}/api/rerank", headers=dx.headers, timeout=120, json={
        "model": "tiny-reranker", "query": QUERY, "documents": DOCS, "top_n": 3, "return_documents": True})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model"] == "tiny-reranker"
    results = doc["results"]
    assert len(results) == 3
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True) and all(isinstance(s, float) for s in scores)
    assert len({x["index"] for x in results}) == 3
    for x in results:
        assert x["document"] == {"text": DOCS[x["index"]]}
    every = httpx.post(f"{dx.url}/api/rerank", headers=dx.headers, timeout=120, json={
        "model": RERANKER, "query": QUERY, "documents": DOCS}).json()["results"]
    assert sorted(x["index"] for x in every) == [0, 1, 2, 3] and "document" not in every[0]
    by_index = {x["index"]: x["relevance_score"] for x in every}
    assert all(abs(by_index[x["index"]] - x["relevance_score"]) < 1e-5 for x in results)  # same engine, same scores


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/v1/rerank", "/v1/reranking", "/rerank", "/reranking"])
def test_v1_rerank_is_llama_servers_answer_relayed(dx: DXServer, path: str) -> None:
    r = httpx.post(f"{dx.url}{path}", headers=dx.headers, timeout=120, json={
        "model": RERANKER, "query": QUERY, "documents": DOCS, "top_n": 2})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["object"] == "list" and doc["model"] == RERANKER and doc["usage"]["prompt_tokens"] > 0
    assert len(doc["results"]) == 2
    assert doc["results"][0]["relevance_score"] >= doc["results"][1]["relevance_score"]


@pytest.mark.integration
def test_a_model_that_is_not_a_reranker_is_a_400_before_any_engine(dx: DXServer) -> None:
    before = set(dx.children())
    r = httpx.post(f"{dx.url}/api/rerank", headers=dx.headers, timeout=60, json={
        "model": "smollm2", "query": QUERY, "documents": DOCS})
    assert r.status_code == 400 and r.json() == {"error": '"smollm2" does not support rerank'}
    r = httpx.post(f"{dx.url}/v1/rerank", headers=dx.headers, timeout=60, json={
        "model": "smollm2", "query": QUERY, "documents": DOCS})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == '"smollm2" does not support rerank'
    r = httpx.post(f"{dx.url}/v1/rerank", headers=dx.headers, timeout=60, json={"query": QUERY, "documents": DOCS})
    assert r.status_code == 400 and "does not support rerank" in r.json()["error"]["message"]  # the default model
    assert set(dx.children()) - before == set()


@pytest.mark.integration
def test_rerank_refusals_keep_their_shape(dx: DXServer) -> None:
    r = httpx.post(f"{dx.url}/api/rerank", headers=dx.headers, timeout=60, json={
        "model": "nope", "query": QUERY, "documents": DOCS})
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = httpx.post(f"{dx.url}/api/rerank", headers=dx.headers, timeout=60, json={
        "model": RERANKER, "query": QUERY, "documents": "not a list"})
    assert r.status_code == 400 and "documents" in r.json()["error"]
    r = httpx.post(f"{dx.url}/v1/rerank", timeout=60, json={"model": RERANKER, "query": QUERY, "documents": DOCS})
    assert r.status_code == 401  # behind the key like every other API route

