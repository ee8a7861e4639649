"""OpenAI's API on DX, and the engine's own routes: relays to llama-server.

``relay`` passes /v1 requests to the engine byte for byte (``dx.engine.relay``),
``models`` is DX's own list (the engine knows only its one model),
``passthrough`` hands every other path (llama.cpp's web UI, /props,
/tokenize...) to the default model's engine. Each handler takes the
transport's request object (see ``dx.server.transport``); ``dx.server.routes`` says which
path goes where.
"""

from __future__ import annotations

import contextlib
import json
import sys
import urllib.parse
from typing import TYPE_CHECKING, Any

from dx import __version__
from dx.engine.lease import EngineLoad, engine_for, open_engine
from dx.engine.props import renders_tools
from dx.engine.relay import engine_json, engine_request
from dx.engine.relay import relay as relay_answer
from dx.errors import BadRequest, EngineError, EngineUnavailable, ModelNotFoundError
from dx.models.defaults import for_source, once_per_request
from dx.server import anthropic_tools, tool_calls, tool_loop
from dx.server.request_json import parse_strict
from dx.server.wire import HTTPError
from dxverify.errors import DXError

if TYPE_CHECKING:
    from dx.server.request import Handler as Request

# Request headers passed on to the engine's own routes: content negotiation and caching of the web
# UI's assets (llama-server keeps them gzip-compressed and answers 415 to a client that cannot take that).
_FORWARDED = ("Accept", "Accept-Encoding", "Accept-Language", "If-None-Match", "If-Modified-Since", "Range")


def health(req: Request) -> None:
    req.send_json(200, {"status": "ok"})


def root(req: Request) -> None:
    """``/``: Ollama's one line (health checks grep for it); a browser (Accept: text/html) gets the engine's web UI.

    ``/?token=T`` is the browser login (``dx.server.login``): a valid token sets the session cookie and
    redirects to ``/``, so the token does not stay in the address bar; a wrong or spent one is 401.
    """
    query = urllib.parse.parse_qs(req.path.partition("?")[2])
    if "token" in query:
        _login(req, query["token"][0])
        return
    if "text/html" not in req.headers.get("Accept", ""):
        req.send_text(200, "Ollama is running")  # Ollama's exact words, no newline
        return
    passthrough(req)


def _login(req: Request, token: str) -> None:
    sessions = req.app.sessions
    if sessions is None:  # --no-auth: nothing to log in to
        _see_home(req)
        return
    sid = sessions.redeem(token)
    if sid is None:
        req.send_text(401, "this login link is wrong or was already used: open the newest one dx printed, "
                           "or /?token=<API key>\n")
        return
    _see_home(req, {"Set-Cookie": sessions.set_cookie(sid), "Cache-Control": "no-store"})
    host = req.headers.get("Host") or f"127.0.0.1:{sessions.port}"
    print(f"dx: a browser logged in; the next login URL is {sessions.login_url('http://' + host)}",
          file=sys.stderr, flush=True)


def _see_home(req: Request, headers: dict[str, str] | None = None) -> None:
    """303 to ``/`` (the login URL's token does not stay in the address bar)."""
    req.send_response(303)
    req.send_header("Location", "/")
    for k, v in (headers or {}).items():
        req.send_header(k, v)
    req.send_header("Content-Length", "0")
    req.end_headers()


@once_per_request()  # the model's defaults: read once, for its SYSTEM/MESSAGEs and its engine lease alike
def relay(req: Request) -> None:
    """/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/messages(/count_tokens): the body goes
    as is to the engine of the body's ``model`` (llama-server speaks OpenAI's and Anthropic's APIs)."""

    path = req.path.split("?", 1)[0]
    body = req.read_body()
    doc = parse_strict(body)  # relayed as is, so it must be JSON the engine takes: else 400 here, not its 500
    model = doc.get("model", "")
    if not isinstance(model, str):
        raise HTTPError(400, "model must be a string")
    if path.startswith("/v1/messages") and not isinstance(doc.get("messages"), list):
        # the engine answers 500 without it, or generates from an empty prompt for a non-list
        raise HTTPError(400, "messages: Field required" if "messages" not in doc else
                        "messages: Input should be a valid list")  # Anthropic's words
    if path == "/v1/chat/completions" and isinstance(doc.get("messages"), list):
        body = _with_model_prefix(req, model, doc, body)
    if path == "/v1/chat/completions" and tool_loop.engaged(req, doc):
        _with_mcp(req, doc, model)
        return
    if path == "/v1/chat/completions" and doc.get("tools"):
        body = _with_tools(req, doc, model, body)
        if body is None:
            return
    if path == "/v1/messages" and doc.get("tools") and _anthropic_with_tools(req, doc, model):
        return
    purpose = "embed" if path == "/v1/embeddings" else "generate"
    cm, _engine, _load, conn, resp = open_engine(req.app.manager, model, None, None, "POST", path, body, purpose,
                                               client=req.connection)
    try:
        _relay_or_503(req, conn, resp)
    finally:
        cm.__exit__(None, None, None)


def _with_model_prefix(req: Request, model: str, doc: dict[str, Any], body: bytes) -> bytes:
    """A model with its own SYSTEM or MESSAGEs (a Modelfile's, an Ollama system layer): they go before the
    chat's messages, as Ollama's /v1 does; any other chat stays byte for byte."""
    try:
        source = req.app.resolver(model)
    except DXError:
        return body  # the engine lease answers the unknown model in its own words
    return json.dumps(doc).encode() if for_source(source).prepend_to(doc["messages"]) else body


def _with_mcp(req: Request, doc: dict[str, Any], model: str) -> None:
    """``dx serve --mcp``: the operator's MCP tools join the request's; DX runs the allowed calls
    (``dx.server.tool_loop``) and answers the final message.

    A stream gets each round's content as SSE chunks as the engine produces it (nothing while DX
    runs a tool), then the calls left for the client, the finish reason, usage if asked, ``[DONE]``.
    """
    if doc.get("stream") is not True:
        answer, _load = tool_loop.run(req, model, doc, generic_tool_answer)
        req.send_json(200, answer)
        return
    out = _Sse(req)
    try:
        answer, _load = tool_loop.run(req, model, doc, generic_tool_answer, on_delta=out.delta)
    except (HTTPError, EngineError, BadRequest) as exc:
        if not out.started:
            raise  # nothing sent yet: the error in its own status and shape
        error = {"message": getattr(exc, "message", None) or str(exc), "type": "server_error",
                 "code": getattr(exc, "status", 400)}  # as dx.engine.relay ends a stream the engine broke off
        out.write(b"data: " + json.dumps({"error": error}).encode() + b"\n\n")
        out.end()
        return
    usage = tool_calls.include_usage(doc)
    if not out.started:  # nothing was streamed (only calls, or an empty answer): the whole answer at once
        sse = tool_calls.openai_stream(answer, tool_loop.parsed_of(answer), include_usage=usage)
        req.send_text(200, sse.decode(), "text/event-stream")
        return
    out.write(tool_calls.openai_stream({**answer, **out.base}, tool_loop.parsed_of(answer), include_usage=usage,
                                       head=False))
    out.end()


class _Sse:
    """An OpenAI chat stream DX writes itself (chunked), begun at its first delta in the engine's chunk shape."""

    def __init__(self, req: Request) -> None:
        self.req = req
        self.base: dict[str, Any] = {}
        self.started = False

    def delta(self, delta: dict[str, Any], event: dict[str, Any]) -> None:
        if not self.started:
            self.base = {"id": event.get("id") or "chatcmpl-dx", "object": "chat.completion.chunk",
                         "created": event.get("created", 0), "model": event.get("model", "")}
            if "system_fingerprint" in event:
                self.base["system_fingerprint"] = event["system_fingerprint"]
            self.req.send_response(200)
            self.req.send_header("Content-Type", "text/event-stream")
            self.req.send_header("Transfer-Encoding", "chunked")
            self.req.end_headers()
            self.started = True
            self.write(self._chunk({"role": "assistant", "content": None}))
        self.write(self._chunk(delta))

    def _chunk(self, delta: dict[str, Any]) -> bytes:
        doc = {**self.base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        return b"data: " + json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"

    def write(self, data: bytes) -> None:
        self.req.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))

    def end(self) -> None:
        self.req.wfile.write(b"0\r\n\r\n")


def _with_tools(req: Request, doc: dict[str, Any], model: str, body: bytes) -> bytes | None:
    """A chat request with ``tools``: answered here in DX's generic format (None), or the body to relay.

    Only a model whose template has no tool support is answered here; for the others the body
    goes to the engine as it came (a named ``tool_choice`` rewritten to the form llama-server takes).
    """
    ask = generic_tool_answer(req, model, None, None, doc)
    if ask is None:
        tools = tool_calls.check_tools(doc.get("tools"))
        native = tool_calls.native_body(doc, tools, tool_calls.check_tool_choice(doc.get("tool_choice"), tools))
        return body if native is None else json.dumps(native).encode()
    answer, parsed, _load = ask
    if doc.get("stream") is True:
        sse = tool_calls.openai_stream(answer, parsed, include_usage=tool_calls.include_usage(doc))
        req.send_text(200, sse.decode(), "text/event-stream")
    else:
        req.send_json(200, tool_calls.openai_answer(answer, parsed))
    return None


def _anthropic_with_tools(req: Request, doc: dict[str, Any], model: str) -> bool:
    """A Messages request with ``tools`` for a model whose template has none: answered here (True).

    Else (a native template) False, and the body goes to the engine as it came.
    """
    ask = generic_tool_answer(req, model, None, None, anthropic_tools.to_openai(doc))
    if ask is None:
        return False
    answer, parsed, _load = ask
    msg = anthropic_tools.message(answer, parsed, model)
    if doc.get("stream") is True:
        req.send_text(200, anthropic_tools.stream(msg).decode(), "text/event-stream")
    else:
        req.send_json(200, msg)
    return True


def generic_tool_answer(
    req: Request, model: str, keep_alive: object, load: EngineLoad | int | None, body: dict[str, Any],
) -> tuple[dict[str, Any], tool_calls.Parsed, float] | None:
    """Ask the engine in DX's generic tool-call format (``dx.server.tool_calls``) when the model needs it.

    ``body`` is an OpenAI chat request. None: the model's template renders tools itself, or the
    request has none; send it the ordinary way. Otherwise (the engine's answer, the parsed
    message, seconds spent loading). A tool's ``parameters`` that llama.cpp's
    json-schema-to-grammar refuses are relaxed to any object, rather than failing the request.
    """
    tools = tool_calls.check_tools(body.get("tools"))
    choice = tool_calls.check_tool_choice(body.get("tool_choice"), tools)
    if not tools:
        return None
    with engine_for(req.app.manager, model, keep_alive, load) as (engine, load_s):
        if renders_tools(engine):
            return None
        try:
            status, answer = engine_json(engine, "/v1/chat/completions", tool_calls.rewrite(body, tools, choice))
            if status == 400 and choice.mode != tool_calls.NONE and "schema" in _message(answer, status).lower():
                status, answer = engine_json(
                    engine, "/v1/chat/completions", tool_calls.rewrite(body, tools, choice, free_arguments=True))
        except EngineUnavailable as exc:
            raise EngineError(503, f"{exc}; retry the request") from None
    if status != 200:
        raise HTTPError(status if 400 <= status < 600 else 502, _message(answer, status))
    return answer, tool_calls.read_answer(answer, choice), load_s


def _message(answer: dict[str, Any], status: int) -> str:
    err = answer.get("error")
    return str(err.get("message") or err) if isinstance(err, dict) else str(err or f"the engine answered {status}")


def models(req: Request) -> None:
    """Every model DX can serve; a loaded one carries its engine's own /v1/models entry (``meta``).

    The engine alone knows only the one model it serves, so the list is DX's;
    what llama-server says of a running model (vocabulary, context it was
    trained for, parameters, size) is passed through from it.
    """
    created = int(req.app.started)
    data = [{"id": n, "object": "model", "created": created, "owned_by": "dx"} for n in _model_names(req)]
    by_id = {d["id"]: d for d in data}
    for lm in req.app.manager.loaded():
        if lm.purpose != "generate" or lm.engine is None:
            continue
        entry = by_id.get(lm.name)
        if entry is None:
            entry = by_id[lm.name] = {"id": lm.name, "object": "model", "created": created, "owned_by": "dx"}
            data.append(entry)
        meta = _engine_model_meta(lm.engine)
        if meta is not None:
            entry["meta"] = meta
    req.send_json(200, {"object": "list", "data": data})


MODEL_PREFIX = "/v1/models/"


def model(req: Request) -> None:
    """``GET /v1/models/{id}`` (``models.retrieve``): ids hold ':' and '/', so the rest of the path, unquoted."""
    from urllib.parse import unquote

    model_id = unquote(req.path.split("?", 1)[0][len(MODEL_PREFIX):])  # a bad %-escape matches no name
    known = model_id in _model_names(req)
    if not known and model_id:
        with contextlib.suppress(ModelNotFoundError, DXError):
            req.app.resolver(model_id)  # names only: another name the served model answers to, or a store name
            known = True
    if not known:
        req.send_json(404, {"error": {"message": f"The model '{model_id[:200]}' does not exist", "type":
                                      "invalid_request_error", "param": "model", "code": "model_not_found"}})
        return
    req.send_json(200, {"id": model_id, "object": "model", "created": int(req.app.started), "owned_by": "dx"})


def _engine_model_meta(engine: Any) -> dict[str, Any] | None:
    try:
        status, doc = engine_json(engine, "/v1/models", timeout=5.0)
    except EngineUnavailable:
        return None
    items = doc.get("data") if status == 200 else None
    if isinstance(items, list) and items and isinstance(items[0], dict) and isinstance(items[0].get("meta"), dict):
        return items[0]["meta"]
    return None


def _model_names(req: Request) -> list[str]:
    names: list[str] = []
    if req.app.resolver.default is not None:
        names.append(req.app.resolver.default.display_name)
    with contextlib.suppress(DXError, OSError):
        names.extend(e.name for e in req.app.resolver.store.list() if e.name not in names)
    return names


# llama.cpp's own routes that decode tokens: a client gone while one runs cancels it (dx.engine.relay waits
# on its socket). Only these: a client that half-closes after its request (FIN, as nginx and Go's net/http
# read it, a client gone) is otherwise still answered on the quick routes (/props, /tokenize, ...).
_GENERATES = frozenset(("POST", p) for p in ("/completion", "/completions", "/chat/completions", "/infill",
                                             "/responses", "/v1/chat/completions/control"))


def passthrough(req: Request) -> None:
    """llama.cpp's own routes and web UI, on the default model's engine.

    The engine's key goes with the request only when the client sent DX's: the
    web UI's public assets are fetched without it, everything else the engine
    itself then refuses.
    """

    method, path, with_key = req.command, req.path.split("?", 1)[0], req.authorized
    if req.app.resolver.default is None:
        raise HTTPError(404, f"no route {method} {path}", kind="not_found_error")
    body = req.read_body() if method in ("POST", "PUT") else None
    if body:  # llama.cpp's own JSON routes: what the engine would choke on (500) is a 400 here

        parse_strict(body)
    with engine_for(req.app.manager, "") as (engine, _load):
        target = req.path if req.path.startswith("/") else "/"
        try:
            forward = {h: v for h in _FORWARDED if (v := req.headers.get(h)) is not None}
            conn, resp = engine_request(
                engine, method, target, body, req.headers.get("Content-Type"), with_key=with_key,
                forward=forward, client=req.connection if (method, path) in _GENERATES else None,
            )
        except EngineUnavailable as exc:
            raise EngineError(503, f"{exc}; retry the request") from None
        if path == "/" and resp.status == 404:  # an engine built without llama.cpp's web UI
            conn.close()
            _front_page(req)
            return
        _relay_or_503(req, conn, resp)


def _relay_or_503(req: Request, conn: Any, resp: Any) -> None:
    """The engine's answer to the client; an engine gone before anything was sent is a 503 to retry."""

    try:
        relay_answer(req, conn, resp)
    except EngineUnavailable as exc:
        req.close_connection = True
        if not req.headers_sent:
            raise EngineError(503, f"{exc}; retry the request") from None


def _front_page(req: Request) -> None:
    """What a browser opening the URL sees when the engine has no web UI: where the APIs are."""
    import html

    default = req.app.resolver.default
    model = html.escape(default.display_name) if default is not None else "models from the store"
    req.send_text(200, (
        "<!doctype html><meta charset=utf-8><title>dx</title>"
        f"<h1>dx {html.escape(__version__)} is serving {model}</h1>"
        "<p>OpenAI API at <code>/v1</code> (chat/completions, completions, embeddings, models), "
        "Anthropic's Messages API at <code>/v1/messages</code>, Ollama API at <code>/api</code>. Send the API key "
        "(<code>~/.dx/api_key</code>) as <code>Authorization: Bearer &lt;key&gt;</code> or "
        "<code>X-Api-Key: &lt;key&gt;</code>.</p>"
        "<p>This build has no web UI; point Open WebUI or any OpenAI/Ollama client here.</p>\n"
    ), "text/html; charset=utf-8")
