"""Who answers what: the dx server's one route table.

One line per route: method, path, handler, and whether it is public (answered
without the API key). ``GET`` also answers ``HEAD``. What a handler does lives
with its API (``dx.server.ollama``, ``dx.server.openai``); how a request gets
here (limits, Host/Origin checks, auth) is ``dx.server.transport``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dx import metrics
from dx.server import (
    ollama,
    ollama_blobs,
    ollama_models,
    ollama_push,
    openai,
    rerank,
)
from dx.server.wire import HTTPError

Handler = Callable[[Any], None]


def _on_first_use(module: str, attr: str) -> Handler:
    """A handler whose module loads when its route is first asked for, not at start.

    For the routes a plain server may never see (``POST /mcp``: the MCP server and its schema
    checker; ``/api/create``: the Modelfile parser): an idle ``dx serve`` stays lighter.
    """
    def handler(req: Any) -> None:
        return getattr(importlib.import_module(module), attr)(req)

    handler.__qualname__ = handler.__name__ = f"{module.rsplit('.', 1)[-1]}.{attr}"
    return handler


@dataclass(frozen=True)
class Route:
    methods: str  # space-separated
    path: str
    handler: Handler
    public: bool = False


ROUTES: tuple[Route, ...] = (
    Route("GET",         "/health",              openai.health, public=True),
    Route("GET",         "/",                    openai.root,   public=True),  # "Ollama is running"; a browser: the web UI
    Route("GET",         "/api/version",         ollama_models.version, public=True),  # probes ask it keyless
    Route("HEAD",        "/api/blobs/*",         ollama_blobs.head),  # does DX have this blob?
    Route("POST",        "/api/blobs/*",         ollama_blobs.post),  # upload a GGUF blob (streamed, verified)
    Route("GET",         "/api/tags",            ollama_models.tags),
    Route("GET",         "/api/ps",              ollama_models.ps),
    Route("POST",        "/api/show",            ollama_models.show),
    Route("POST",        "/api/generate",        ollama.generate),
    Route("POST",        "/api/chat",            ollama.chat),
    Route("POST",        "/api/embed",           ollama.embed),
    Route("POST",        "/api/embeddings",      ollama.embeddings),
    Route("POST",        "/api/pull",            ollama_models.pull),
    Route("POST",        "/api/push",            ollama_push.push),  # a store model to an OCI registry
    Route("POST DELETE", "/api/delete",          ollama_models.delete),
    Route("POST",        "/api/copy",            ollama_models.copy),
    Route("POST",        "/api/create",          _on_first_use("dx.server.ollama_create", "create")),  # from + system/parameters/…, or files
    Route("POST",        "/api/rerank",          rerank.api_rerank),  # query + documents -> scores (reranker models)
    Route("POST",        "/v1/chat/completions", openai.relay),  # byte for byte to the engine
    Route("POST",        "/v1/completions",      openai.relay),
    Route("POST",        "/v1/embeddings",       openai.relay),
    Route("POST",        "/v1/responses",        openai.relay),  # OpenAI's Responses API, llama-server's own
    Route("POST",        "/v1/messages",         openai.relay),  # Anthropic's Messages API, llama-server's own
    Route("POST",        "/v1/messages/count_tokens", openai.relay),
    Route("POST",        "/v1/rerank",           rerank.relay),  # llama-server's, on a --rerank engine
    Route("POST",        "/v1/reranking",        rerank.relay),  # llama-server's other names for it
    Route("POST",        "/rerank",              rerank.relay),
    Route("POST",        "/reranking",           rerank.relay),
    Route("GET",         "/v1/models",           openai.models),
    Route("GET",         "/v1/models/*",         openai.model),  # * = the rest of the path (ids hold '/')
    Route("GET",         "/metrics",             metrics.serve),  # Prometheus: dx's and the engines' numbers
    Route("POST",        "/mcp",                 _on_first_use("dx.server.mcp_http", "post")),  # the model as an MCP server (streamable HTTP)
    Route("GET DELETE",  "/mcp",                 _on_first_use("dx.server.mcp_http", "other")),  # 405: no server stream, no sessions
)
# Not in the table: any other /api/ path is 404 (405 for other methods); every other path goes
# to the default model's engine (openai.passthrough) — public for GET/HEAD outside /api/ and /v1/
# (llama.cpp's web UI and its assets; the engine still asks its own key for its API), keyed otherwise.


# llama-server's own tool routes (its built-in tools and MCP client, the web UI's MCP proxy) run calls
# with no consent asked: never reachable through DX, whatever the engine was started with.
_ENGINE_ONLY = ("/tools", "/cors-proxy")


def _no_route(req: Any) -> None:
    method, path = req.command, req.path.split("?", 1)[0]
    raise HTTPError(404 if method in ("GET", "POST", "DELETE") else 405, f"no route {method} {path}")


def _index(routes: tuple[Route, ...], prefixes: bool = False) -> dict[tuple[str, str], Route]:
    """(method, path) -> route; with ``prefixes`` the routes whose path ends in ``*``, keyed by the prefix."""
    index: dict[tuple[str, str], Route] = {}
    for r in routes:
        if r.path.endswith("*") != prefixes:
            continue
        for m in r.methods.split():
            index[(m, r.path.rstrip("*"))] = r
            if m == "GET":
                index[("HEAD", r.path.rstrip("*"))] = r
    return index


_INDEX = _index(ROUTES)
_PREFIXES = _index(ROUTES, prefixes=True)


def resolve(method: str, path: str) -> tuple[Handler, bool]:
    """(handler, public) for a request; ``path`` without the query string."""
    route = _INDEX.get((method, path))
    if route is None:
        route = next((r for (m, prefix), r in _PREFIXES.items() if m == method and path.startswith(prefix)), None)
    if route is not None:
        return route.handler, route.public
    if path.startswith("/api/") or path in _ENGINE_ONLY or path.startswith(tuple(p + "/" for p in _ENGINE_ONLY)):
        return _no_route, False
    return openai.passthrough, method in ("GET", "HEAD") and not path.startswith("/v1/")

metrics.set_known_routes(r.path for r in ROUTES)  # each of the table's paths is its own metrics label
