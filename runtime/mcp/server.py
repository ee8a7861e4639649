"""The served model as an MCP server: its tools (generate, chat, embed) and its models as resources.

``MCPServer`` answers MCP's methods — ``initialize`` (the protocol version negotiated:
the client's when DX speaks it, else DX's newest), ``ping``, ``tools/list``,
``tools/call``, ``resources/list``, ``resources/read`` — for any transport: stdio
(``serve_stdio``: newline-delimited JSON, ``dx mcp``) or one HTTP POST at a time
(``handle_raw``: ``dx serve``'s ``/mcp`` route). It is stateless between requests
(no session: every answer depends on the request alone), so the HTTP side needs no
session id.

What is whose fault, as the spec puts it: a message that is not JSON is -32700, one that
is not JSON-RPC -32600, an unknown method -32601, an unknown tool or arguments that do
not fit the tool's schema -32602 (a clear one-line message); a tool that ran and failed
(the model cannot load, the engine refused the input) is a result with ``isError: true``
the model calling it can read. No answer carries a server path or a traceback.

``ModelTools`` runs the tools on DX's engines through the EngineManager, as the HTTP
server does (``dx.engine.lease.engine_for``).
"""

from __future__ import annotations

import contextlib
import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from dx import __version__
from dx.engine.lease import engine_for
from dx.engine.relay import engine_json
from dx.errors import BadRequest, EngineError, EngineUnavailable
from dx.mcp import rpc, schema
from dx.mcp.rpc import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    RESOURCE_NOT_FOUND,
    Notification,
    Request,
    Response,
    RPCError,
)
from dx.models.capabilities import capabilities_for
from dx.models.catalog import source_of
from dx.models.check import read_facts
from dx.models.defaults import for_source
from dxverify.errors import DXError

if TYPE_CHECKING:
    from dx.engine.manager import EngineManager
    from dx.models.catalog import ModelResolver
    from dx.models.source import ModelSource

# Newest first: what DX negotiates (the handshake revisions; 2026-07-28's stateless envelope is not spoken).
PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
LATEST_PROTOCOL_VERSION = PROTOCOL_VERSIONS[0]
RESOURCE_PREFIX = "dx://models/"


class ToolFailed(Exception):
    """The tool ran and could not do its work: answered as a result with ``isError: true``."""


@dataclass(frozen=True)
class OwnTool:
    """A tool DX itself offers over MCP (the model's generate/chat/embed), with the function that runs it
    (``dx.mcp.client.Tool`` is the other side: a tool another server offers DX's host)."""

    name: str
    title: str
    description: str
    input_schema: dict[str, Any]
    run: Callable[[dict[str, Any]], dict[str, Any]]  # arguments -> structured result

    def listing(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "description": self.description,
                "inputSchema": self.input_schema}


# ----------------------------------------------------------------- arguments against a tool's schema
def check_arguments(schema_: dict[str, Any], value: Any, where: str = "arguments") -> None:
    """Refuse arguments that do not fit the tool's schema (``dx.mcp.schema``, the host's checker too):
    RPCError(-32602) naming the field, so the client can fix the call."""
    problem = schema.validate(value, schema_, where)
    if problem is not None:
        raise RPCError(INVALID_PARAMS, problem)


# ----------------------------------------------------------------- the protocol
class MCPServer:
    """MCP's methods over a set of tools and resources; one instance serves any number of clients."""

    def __init__(self, tools: ModelTools, *, name: str = "dx", instructions: str | None = None) -> None:
        self.tools = tools
        self.name = name
        self.instructions = instructions
        self._by_name = {t.name: t for t in tools.tools()}

    # ------------------------------------------------------------- one message
    def handle_raw(self, raw: bytes | str) -> dict[str, Any] | None:
        """Answer one message's text: the response document, or None (a notification or a response)."""
        try:
            msg = rpc.parse(raw)
        except RPCError as exc:
            return rpc.error_for(exc)
        return self.handle(msg)

    def handle(self, msg: rpc.Message) -> dict[str, Any] | None:
        if isinstance(msg, (Notification, Response)):
            return None  # notifications/initialized, notifications/cancelled…; DX asks clients nothing
        try:
            return rpc.result(msg.id, self._dispatch(msg))
        except RPCError as exc:
            return rpc.error(msg.id, exc)
        except Exception as exc:  # a bug of ours: one line to the client, the traceback to stderr
            traceback.print_exc(file=sys.stderr)
            return rpc.error(msg.id, RPCError(rpc.INTERNAL_ERROR, f"Internal error: {type(exc).__name__}"))

    def _dispatch(self, req: Request) -> dict[str, Any]:
        method, params = req.method, req.params
        if method == "initialize":
            return self._initialize(params)
        if method == "ping":
            return {}
        if method == "tools/list":
            return {"tools": [t.listing() for t in self._by_name.values()]}
        if method == "tools/call":
            return self._call(params)
        if method == "resources/list":
            return {"resources": self.tools.resources()}
        if method == "resources/templates/list":
            return {"resourceTemplates": []}
        if method == "resources/read":
            uri = params.get("uri")
            if not isinstance(uri, str):
                raise RPCError(INVALID_PARAMS, "resources/read: params.uri must be a string")
            return {"contents": self.tools.read_resource(uri)}
        if method == "prompts/list":
            return {"prompts": []}
        if method == "logging/setLevel":
            return {}
        raise RPCError(METHOD_NOT_FOUND, f"Method not found: {method[:100]}")

    def _initialize(self, params: dict[str, Any]) -> dict[str, Any]:
        asked = params.get("protocolVersion")
        if not isinstance(asked, str):
            raise RPCError(INVALID_PARAMS, "initialize: params.protocolVersion must be a string")
        version = asked if asked in PROTOCOL_VERSIONS else LATEST_PROTOCOL_VERSION  # the client decides to go on
        out: dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}, "resources": {"subscribe": False, "listChanged": False}},
            "serverInfo": {"name": self.name, "title": "DX", "version": __version__},
        }
        if self.instructions:
            out["instructions"] = self.instructions
        return out

    def _call(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("name")
        if not isinstance(name, str):
            raise RPCError(INVALID_PARAMS, "tools/call: params.name must be a string")
        tool = self._by_name.get(name)
        if tool is None:
            raise RPCError(INVALID_PARAMS, f"Unknown tool: {name[:100]!r} (tools: {', '.join(self._by_name)})")
        args = params.get("arguments", {})
        if args is None:
            args = {}
        check_arguments(tool.input_schema, args, name)
        try:
            structured = tool.run(args)
        except ToolFailed as exc:
            return {"content": [{"type": "text", "text": str(exc)}], "isError": True}
        return {"content": [{"type": "text", "text": structured.pop("_text")}], "structuredContent": structured,
                "isError": False}

    # ------------------------------------------------------------- stdio
    def serve_stdio(self, stdin: IO[bytes], stdout: IO[bytes], workers: int = 4) -> None:
        """Read messages until EOF, answer each; requests run on ``workers`` threads, so a ``ping`` is
        answered while a generation runs. A line that is no message gets its error and the loop goes on."""
        # not at module top: concurrent.futures imports logging, whose at-fork hooks, registered by an import
        # that runs while another thread forks an engine, make CPython print "cannot release un-acquired lock"
        # (dx serve loads this module at its first /mcp request; dx mcp's stdio path imports it before preloading)
        from concurrent.futures import ThreadPoolExecutor

        out = rpc.LineWriter(stdout)

        def answer(msg: rpc.Message) -> None:
            doc = self.handle(msg)
            if doc is not None:
                with contextlib.suppress(OSError, ValueError):  # the client went away: nothing to tell it
                    out.send(doc)

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dx-mcp")
        ended = False
        try:
            while True:
                try:
                    msg = rpc.read_message(stdin)
                except RPCError as exc:
                    out.send(rpc.error_for(exc))
                    continue
                if msg is None:
                    ended = True
                    break
                if isinstance(msg, Request):
                    pool.submit(answer, msg)
        finally:  # EOF: the calls under way still get their answers; a signal: they are dropped
            pool.shutdown(wait=ended, cancel_futures=not ended)


# ----------------------------------------------------------------- the tools, on DX's engines
_MODEL_ARG = {"type": "string", "description": "A model name; default: the model this server serves."}
_GENERATE_SCHEMA = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string", "description": "The text to continue or answer."},
        "system": {"type": "string", "description": "A system prompt (default: the model's own)."},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 131072, "description": "Most tokens to generate."},
        "temperature": {"type": "number", "minimum": 0, "maximum": 5, "description": "0: deterministic."},
        "model": _MODEL_ARG,
    },
    "required": ["prompt"],
    "additionalProperties": False,
}
_MESSAGE = {
    "type": "object",
    "properties": {"role": {"type": "string", "enum": ["system", "user", "assistant"]}, "content": {"type": "string"}},
    "required": ["role", "content"],
    "additionalProperties": False,
}
_CHAT_SCHEMA = {
    "type": "object",
    "properties": {
        "messages": {"type": "array", "items": _MESSAGE, "minItems": 1, "description": "The conversation so far."},
        "max_tokens": _GENERATE_SCHEMA["properties"]["max_tokens"],
        "temperature": _GENERATE_SCHEMA["properties"]["temperature"],
        "model": _MODEL_ARG,
    },
    "required": ["messages"],
    "additionalProperties": False,
}
_EMBED_SCHEMA = {
    "type": "object",
    "properties": {
        "texts": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 256,
                  "description": "The texts to embed, one vector each."},
        "model": _MODEL_ARG,
    },
    "required": ["texts"],
    "additionalProperties": False,
}


def _engine_message(answer: dict[str, Any], status: int) -> str:
    err = answer.get("error")
    if isinstance(err, dict):
        err = err.get("message")
    return str(err or f"the engine answered {status}")[:500]


class ModelTools:
    """``generate``, ``chat`` and ``embed`` on DX's engines, and the models as ``dx://models/NAME`` resources."""

    def __init__(self, manager: EngineManager, resolver: ModelResolver) -> None:
        self.manager = manager
        self.resolver = resolver

    def tools(self) -> list[OwnTool]:
        return [
            OwnTool("generate", "Generate text", "Answer a prompt with the local model; returns the text.",
                 _GENERATE_SCHEMA, self.generate),
            OwnTool("chat", "Chat", "Continue a conversation with the local model; returns the assistant's message.",
                 _CHAT_SCHEMA, self.chat),
            OwnTool("embed", "Embed texts", "Embed texts with the local model; returns one vector per text.",
                 _EMBED_SCHEMA, self.embed),
        ]

    # ------------------------------------------------------------- tools
    def _model(self, args: dict[str, Any]) -> str:
        name = args.get("model")
        if name:
            return str(name)
        if self.resolver.default is None:
            raise RPCError(INVALID_PARAMS, "model is required: this server was started without a model")
        return self.resolver.default.display_name

    def _complete(self, name: str, messages: list[dict[str, Any]], args: dict[str, Any]) -> dict[str, Any]:
        with contextlib.suppress(DXError, OSError):
            for_source(self.resolver(name)).prepend_to(messages)  # the model's own SYSTEM, as Ollama's chat
        body: dict[str, Any] = {"messages": messages, "stream": False}
        for key in ("max_tokens", "temperature"):
            if key in args:
                body[key] = args[key]
        answer, _status = self._engine(name, "generate", lambda engine: engine_json(
            engine, "/v1/chat/completions", body))
        choice = (answer.get("choices") or [{}])[0]
        msg = choice.get("message") or {}
        return {"model": name, "message": {"role": "assistant", "content": msg.get("content") or ""},
                "finish_reason": choice.get("finish_reason"), "usage": answer.get("usage") or {}}

    def _engine(self, name: str, purpose: str,
                ask: Callable[[Any], tuple[int, dict[str, Any]]]) -> tuple[dict[str, Any], int]:
        """Lease ``name``'s engine and ask it; every failure a ToolFailed in words a client may see."""
        try:
            with engine_for(self.manager, name, purpose=purpose) as (engine, _load):
                status, answer = ask(engine)
        except (DXError, BadRequest, EngineError) as exc:
            raise ToolFailed(getattr(exc, "message", None) or str(exc)) from None
        except EngineUnavailable as exc:
            raise ToolFailed(f"{exc}; retry") from None
        if status != 200:
            raise ToolFailed(f"the engine refused the request: {_engine_message(answer, status)}")
        return answer, status

    def generate(self, args: dict[str, Any]) -> dict[str, Any]:
        name = self._model(args)
        messages: list[dict[str, Any]] = []
        if "system" in args:
            messages.append({"role": "system", "content": args["system"]})
        messages.append({"role": "user", "content": args["prompt"]})
        out = self._complete(name, messages, args)
        text = out.pop("message")["content"]
        return {"_text": text, "text": text, **out}

    def chat(self, args: dict[str, Any]) -> dict[str, Any]:
        name = self._model(args)
        out = self._complete(name, [dict(m) for m in args["messages"]], args)
        return {"_text": out["message"]["content"], **out}

    def embed(self, args: dict[str, Any]) -> dict[str, Any]:

        name = self._model(args)
        answer, _status = self._engine(name, "embed", lambda engine: engine_json(
            engine, "/v1/embeddings", {"input": args["texts"]}))
        data = sorted(answer.get("data") or [], key=lambda d: d.get("index", 0))
        vectors = [d.get("embedding") or [] for d in data]
        out = {"model": name, "embeddings": vectors, "dimensions": len(vectors[0]) if vectors else 0}
        return {"_text": json.dumps(out, separators=(",", ":")), **out}

    # ------------------------------------------------------------- resources
    def _sources(self) -> list[ModelSource]:

        found: list[ModelSource] = []
        default = self.resolver.default
        if default is not None:
            found.append(default)
        with contextlib.suppress(DXError, OSError):
            for entry in self.resolver.store.list():
                if default is None or entry.name != default.display_name:
                    with contextlib.suppress(DXError, OSError):
                        found.append(source_of(entry))
        return found

    def resources(self) -> list[dict[str, Any]]:
        default = self.resolver.default
        return [{"uri": RESOURCE_PREFIX + quote(s.display_name, safe=":"), "name": s.display_name,
                 "title": s.display_name + (" (served)" if default is not None and s is default else ""),
                 "description": f"The model {s.display_name}: its family, size, context and capabilities.",
                 "mimeType": "application/json"} for s in self._sources()]

    def read_resource(self, uri: str) -> list[dict[str, Any]]:

        if not uri.startswith(RESOURCE_PREFIX):
            raise RPCError(RESOURCE_NOT_FOUND, f"Resource not found: {uri[:200]}", {"uri": uri[:200]})
        name = unquote(uri[len(RESOURCE_PREFIX):])
        source = next((s for s in self._sources() if s.display_name == name), None)
        if source is None:
            raise RPCError(RESOURCE_NOT_FOUND, f"Resource not found: {uri[:200]}", {"uri": uri[:200]})
        doc: dict[str, Any] = {"name": name, "served": source is self.resolver.default}
        with contextlib.suppress(DXError, OSError, ValueError):
            facts = read_facts(source.path, source.offset, source.length)
            doc.update({"family": facts.family, "architecture": facts.arch, "parameter_size": facts.parameter_size,
                        "quantization": facts.quant, "context_length": facts.context_length,
                        "embedding_length": facts.embedding_length})
        with contextlib.suppress(DXError, OSError, ValueError):
            doc["capabilities"] = capabilities_for(source).names()
        with contextlib.suppress(DXError, OSError, ValueError):
            doc["size"] = source.size()
            doc["digest"] = source.sha256 or ""
        return [{"uri": uri, "mimeType": "application/json", "text": json.dumps(doc)}]


def serve_stdio_forever(server: MCPServer, stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """``server.serve_stdio`` until EOF; a ^C ends it quietly (a client closing stdin is the normal end)."""
    try:
        server.serve_stdio(stdin, stdout)
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(Exception):
            stdout.flush()

