"""Reranking: ``/v1/rerank`` (llama-server's own, relayed) and ``/api/rerank`` (Ollama's most-asked shape).

A reranker is a cross-encoder: it scores each (query, document) pair with a
classifier head. llama-server does that on an engine started with ``--rerank``
(embeddings on, pooling "rank"), so a reranking request goes to an engine of its
own purpose (``dx.engine.process.RERANK``), never to the chat engine.

``--rerank`` forces rank pooling onto any model, and a model without a classifier
head then "scores" with its raw hidden state: numbers, but meaningless ones. So
DX asks the GGUF first and refuses, in one line and before any engine starts, a
model that is not a reranker: one whose ``<arch>.pooling_type`` is not rank (4)
and that carries no classifier head (``cls`` / ``cls.output`` tensors, what
llama.cpp's converter writes for ``*ForSequenceClassification``).

``/api/rerank`` takes ``{"model", "query", "documents": [str…], "top_n"?,
"return_documents"?}`` and answers ``{"model", "results": [{"index",
"relevance_score", "document"?: {"text"}}]}``, best first: the shape of Ollama
issue #3368's requests and of its reranking pull requests (Jina's and Cohere's
API, which llama-server's ``/v1/rerank`` also speaks).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from dx.engine.lease import engine_for, open_engine
from dx.engine.process import RERANK
from dx.engine.relay import engine_json
from dx.errors import BadRequest, EngineError, EngineUnavailable
from dx.server.ollama import read_json
from dx.server.ollama_wire import engine_error_message, model_name, require_object
from dx.server.openai import _relay_or_503
from dx.server.request_json import parse_strict
from dx.server.wire import HTTPError

if TYPE_CHECKING:
    from dx.models.source import ModelSource
    from dx.server.request import Handler as Request

POOLING_RANK = 4  # llama.h: LLAMA_POOLING_TYPE_RANK
_HEADS = frozenset({"cls.weight", "cls.output.weight"})
ENGINE_PATH = "/v1/rerank"
MAX_DOCUMENTS = 10_000


def is_reranker(source: ModelSource) -> bool:
    """Does the GGUF say it ranks (rank pooling, or a classifier head)? Read once per file version."""
    path = os.fspath(source.path)
    try:
        st = os.stat(path)
    except OSError:
        return True  # let the engine lease say what is wrong with the file (a clear 404/500 there)
    return _is_reranker(path, source.offset, source.length, st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=64)
def _is_reranker(path: str, offset: int, length: int | None, size: int, mtime_ns: int, inode: int) -> bool:
    from dxverify.errors import DXError
    from dxverify.gguf import read_gguf

    try:
        with read_gguf(path, offset, length) as gf:
            arch = gf.get("general.architecture") or ""
            if gf.get(f"{arch}.pooling_type") == POOLING_RANK:
                return True
            return any(t.name in _HEADS for t in gf.tensors)
    except DXError:
        return True  # a damaged file: the engine lease verifies it and answers with the reason


def require_reranker(req: Request, name: str) -> None:
    """400 ``"NAME" does not support rerank`` (Ollama's wording for a missing capability) before any engine."""
    source = req.app.resolver(name)  # 404 for an unknown model, in the route's own shape
    if not is_reranker(source):
        shown = name or source.display_name
        raise BadRequest(f'"{shown}" does not support rerank')


def relay(req: Request) -> None:
    """``/v1/rerank`` (and llama-server's aliases ``/v1/reranking``, ``/rerank``, ``/reranking``): byte for byte
    to the model's reranking engine, chosen by the body's ``model``."""
    body = req.read_body()
    doc = require_object(parse_strict(body))
    model = doc.get("model", "")
    if not isinstance(model, str):
        raise BadRequest("model must be a string")
    require_reranker(req, model)
    cm, _engine, _load, conn, resp = open_engine(req.app.manager, model, None, None, "POST", ENGINE_PATH, body,
                                                 RERANK)
    try:
        _relay_or_503(req, conn, resp)
    finally:
        cm.__exit__(None, None, None)


def rerank_request(doc: dict[str, Any]) -> tuple[str, list[str], int | None, bool]:
    """(query, documents, top_n, return_documents) from an ``/api/rerank`` body, or a 400 naming the field."""
    query = doc.get("query")
    if not isinstance(query, str) or not query:
        raise BadRequest("query must be a non-empty string")
    documents = doc.get("documents")
    if not isinstance(documents, list) or not documents:
        raise BadRequest("documents must be a non-empty array of strings")
    texts = []
    for i, d in enumerate(documents):
        if isinstance(d, dict) and isinstance(d.get("text"), str):  # Cohere/Jina also take {"text": …}
            d = d["text"]
        if not isinstance(d, str):
            raise BadRequest(f"documents[{i}] must be a string")
        texts.append(d)
    if len(texts) > MAX_DOCUMENTS:
        raise BadRequest(f"at most {MAX_DOCUMENTS} documents in one request")
    top_n = doc.get("top_n")
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1):
        raise BadRequest("top_n must be a positive integer")
    ret = doc.get("return_documents", False)
    if not isinstance(ret, bool):
        raise BadRequest("return_documents must be true or false")
    return query, texts, top_n, ret


def rerank_answer(name: str, engine_doc: dict[str, Any], texts: list[str], top_n: int | None,
                  return_documents: bool) -> dict[str, Any]:
    """The engine's ``/v1/rerank`` answer in ``/api/rerank``'s shape: best first, ``top_n`` at most."""
    results = []
    for r in engine_doc.get("results") or []:
        if not isinstance(r, dict) or not isinstance(r.get("index"), int) or not 0 <= r["index"] < len(texts):
            continue
        item: dict[str, Any] = {"index": r["index"], "relevance_score": float(r.get("relevance_score") or 0.0)}
        if return_documents:
            item["document"] = {"text": texts[r["index"]]}
        results.append(item)
    results.sort(key=lambda r: r["relevance_score"], reverse=True)
    return {"model": name, "results": results[:top_n] if top_n else results}


def api_rerank(req: Request) -> None:
    """``/api/rerank``: query + documents -> scores, on the model's reranking engine."""
    doc = require_object(read_json(req))
    name = model_name(doc)
    query, texts, top_n, ret = rerank_request(doc)
    require_reranker(req, name)
    with engine_for(req.app.manager, name, doc.get("keep_alive"), purpose=RERANK) as (engine, _load):
        try:
            status, answer = engine_json(engine, ENGINE_PATH, {"query": query, "documents": texts,
                                                              "top_n": len(texts)})
        except EngineUnavailable as exc:
            raise EngineError(503, f"{exc}; retry the request") from None
    if status != 200:
        raise HTTPError(status if 400 <= status < 600 else 502, engine_error_message(answer, status))
    req.send_json(200, rerank_answer(name, answer, texts, top_n, ret))
