"""Ollama's inference API on DX: /api/generate, /api/chat, /api/embed(dings), translated onto the engine's OpenAI routes.

Each handler takes the transport's request object (see ``dx.server.transport``) and
answers it; validation and the mapping of fields live in ``dx.server.ollama_wire``
(pure functions). The model management routes (tags, ps, show, pull, copy, delete) are
``dx.server.ollama_models``; which handler answers which path is ``dx.server.routes``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dx import metrics
from dx.engine.keep_alive import parse_keep_alive
from dx.engine.lease import EngineLoad, engine_for, open_engine
from dx.engine.relay import engine_json, hang_up, iter_chunks
from dx.errors import BadRequest, EngineError, EngineUnavailable
from dx.models.capabilities import ModelCapabilities, capabilities_for
from dx.models.defaults import for_source, once_per_request
from dx.server import tool_loop
from dx.server.ollama_wire import (
    chat_request,
    check_shift,
    check_truncate,
    done_fields,
    embed_dimensions,
    embed_input,
    engine_error_message,
    engine_logprobs,
    generate_images,
    generate_request,
    infill_choice,
    infill_request,
    logprob_fields,
    logprob_request,
    logprobs_to_ollama,
    map_options,
    message_images,
    model_name,
    now_iso,
    parse_think,
    require_object,
    shorten_vector,
    sse_events,
    think_fields,
    tool_calls_to_ollama,
    unsupported,
)
from dx.server.openai import generic_tool_answer
from dx.server.request_json import parse_strict
from dx.server.tool_calls import openai_answer
from dx.server.wire import HTTPError

if TYPE_CHECKING:
    from dx.server.request import Handler as Request


def read_json(req: Request) -> dict[str, Any]:
    """The body as strict JSON (``dx.server.request_json``): what the engine would choke on is a 400 here."""

    return parse_strict(req.read_body())


def _load_only(req: Request, doc: dict[str, Any], name: str) -> bool:
    """Ollama loads (or, with keep_alive 0, unloads) a model on an empty request."""

    keep_alive = doc.get("keep_alive")
    try:
        keep = parse_keep_alive(keep_alive)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    key = "response" if req.path.startswith("/api/generate") else "message"
    empty = "" if key == "response" else {"role": "assistant", "content": ""}
    if keep == 0:
        req.app.resolver(name)  # 404 for an unknown model
        req.app.manager.unload(name)
        reason = "unload"
    else:
        with engine_for(req.app.manager, name, keep_alive):
            pass
        reason = "load"
    req.send_json(200, {"model": name, "created_at": now_iso(), key: empty, "done": True, "done_reason": reason})
    return True


@once_per_request()  # the model's defaults: read once, for its SYSTEM/MESSAGEs and its engine lease alike
def generate(req: Request) -> None:
    doc = require_object(read_json(req))
    name = model_name(doc)
    if not doc.get("prompt") and not doc.get("suffix"):
        _load_only(req, doc, name)
        return
    if doc.get("suffix"):
        caps = _capabilities(req, name, doc, images=bool(generate_images(doc)))
        if not caps.insert:
            raise unsupported(name, "insert")
        body, num_ctx = infill_request(doc)
        body.update(_field_engine_args(doc, caps, name, "/infill"))
        _complete(req, name, doc, "/infill", body, num_ctx, "response")
        return
    path, body, num_ctx = generate_request(doc)
    caps = _capabilities(req, name, doc, images=bool(generate_images(doc)))
    body.update(_field_engine_args(doc, caps, name, path))
    if path == "/v1/chat/completions":  # not raw: the model's own system prompt applies, as in Ollama
        _default_system(req, name, body)
    _complete(req, name, doc, path, body, num_ctx, "response")


@once_per_request()
def chat(req: Request) -> None:
    doc = require_object(read_json(req))
    name = model_name(doc)
    body, num_ctx = chat_request(doc)
    if not body["messages"]:
        _load_only(req, doc, name)
        return
    caps = _capabilities(req, name, doc, images=message_images(doc))
    body.update(_field_engine_args(doc, caps, name, "/v1/chat/completions"))
    _default_system(req, name, body)
    if tool_loop.engaged(req, body):
        _with_mcp(req, name, doc, body, num_ctx)
        return
    if body.get("tools") and _generic_tools(req, name, doc, body, num_ctx):
        return
    _complete(req, name, doc, "/v1/chat/completions", body, num_ctx, "message")


def _capabilities(req: Request, name: str, doc: dict[str, Any], *, images: bool) -> ModelCapabilities:
    """Check the fields every model may refuse before any engine starts: a 400 in Ollama's words."""
    if doc.get("keep_alive") is not None:
        try:
            parse_keep_alive(doc.get("keep_alive"))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    check_shift(doc)
    check_truncate(doc)  # DX never cuts a chat's history; an over-long prompt is the engine's 400 either way
    caps = capabilities_for(req.app.resolver(name))
    if not caps.completion:
        raise unsupported(name, "chat" if req.path.startswith("/api/chat") else "generate")
    if images and not caps.vision:
        raise unsupported(name, "images")
    return caps


def _field_engine_args(doc: dict[str, Any], caps: ModelCapabilities, name: str, path: str) -> dict[str, Any]:
    """``think`` and ``logprobs``/``top_logprobs`` as the engine's fields for ``path``."""
    think = think_fields(parse_think(doc.get("think")), caps.thinking, name)
    want, top = logprob_request(doc)
    fields = think if path == "/v1/chat/completions" else {}
    fields.update(logprob_fields(want, top, path))
    return fields


def _generic_tools(req: Request, name: str, doc: dict[str, Any], body: dict[str, Any], num_ctx: EngineLoad | None) -> bool:
    """Tools for a model whose template has none (DX's generic format); False: the engine's template does it.

    The answer is parsed only once complete, so a stream carries it in one chunk (the reply or
    the calls) before the final one, as Ollama sends tool calls.
    """
    started = time.monotonic()
    ask = generic_tool_answer(req, name, doc.get("keep_alive"), num_ctx, body)
    if ask is None:
        return False
    answer, parsed, load = ask
    _send_final(req, body, _final(name, openai_answer(answer, parsed), started, load, "message", now_iso()))
    return True


def _with_mcp(req: Request, name: str, doc: dict[str, Any], body: dict[str, Any], num_ctx: EngineLoad | None) -> None:
    """``dx serve --mcp``: the allowed MCP calls run in DX (``dx.server.tool_loop``), the answer in Ollama's shape.

    A stream gets each round's content as NDJSON chunks as the engine produces it (nothing while
    DX runs a tool), then the calls left for the client in a chunk of their own, then the final one.
    """
    started = time.monotonic()
    if not body["stream"]:
        answer, load = tool_loop.run(req, name, body, generic_tool_answer, doc.get("keep_alive"), num_ctx)
        _send_final(req, body, _final(name, answer, started, load, "message", now_iso()))
        return
    lines = _Lines(req)

    def on_delta(delta: dict[str, Any], _event: dict[str, Any]) -> None:
        msg: dict[str, Any] = {"role": "assistant", "content": delta.get("content") or ""}
        if delta.get("reasoning_content"):
            msg["thinking"] = delta["reasoning_content"]
        lines({"model": name, "created_at": now_iso(), "message": msg, "done": False})

    try:
        answer, load = tool_loop.run(req, name, body, generic_tool_answer, doc.get("keep_alive"), num_ctx,
                                     on_delta=on_delta)
    except (HTTPError, EngineError, BadRequest) as exc:
        if not lines.started:
            raise  # nothing sent yet: the error in its own status and shape
        lines({"error": getattr(exc, "message", None) or str(exc)})
        req.wfile.write(b"0\r\n\r\n")
        return
    _send_final(req, body, _final(name, answer, started, load, "message", now_iso()), lines)


class _Lines:
    """An NDJSON answer begun at its first line: until then an error can still be a plain HTTP error."""

    def __init__(self, req: Request) -> None:
        self.req = req
        self.emit: Callable[[dict[str, Any]], None] | None = None

    @property
    def started(self) -> bool:
        return self.emit is not None

    def __call__(self, doc: dict[str, Any]) -> None:
        if self.emit is None:
            self.emit = start_ndjson(self.req)
        self.emit(doc)


def _send_final(req: Request, body: dict[str, Any], final: dict[str, Any], lines: _Lines | None = None) -> None:
    """A chat answer made whole in DX (tools): as JSON, or as Ollama's stream ends one.

    The message goes in one chunk before the final one (as Ollama sends tool calls); when its
    content was already streamed (``lines`` started), only the calls are left for that chunk.
    """
    if not body["stream"]:
        req.send_json(200, final)
        return
    message = final["message"]
    lines = lines or _Lines(req)
    if lines.started:
        message = {"role": "assistant", "content": "",
                   **({"tool_calls": message["tool_calls"]} if message.get("tool_calls") else {})}
    if message["content"] or message.get("tool_calls"):
        lines({"model": final["model"], "created_at": final["created_at"], "message": message, "done": False})
    lines({**final, "message": {"role": "assistant", "content": ""}})
    req.wfile.write(b"0\r\n\r\n")


def _default_system(req: Request, name: str, body: dict[str, Any]) -> None:
    """The model's own system prompt (an Ollama system layer, a Modelfile's SYSTEM) goes first unless the
    request has one; a created model's MESSAGEs go before the request's own, as in Ollama."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for_source(req.app.resolver(name)).prepend_to(messages)


def _complete(
    req: Request, name: str, doc: dict[str, Any], path: str, body: dict[str, Any], num_ctx: EngineLoad | None, key: str,
) -> None:
    started = time.monotonic()
    want_logprobs, top = logprob_request(doc)
    top_logprobs = top if want_logprobs else None  # how many alternatives Ollama's answer lists per token
    cm, _engine, load, conn, resp = open_engine(
        req.app.manager, name, doc.get("keep_alive"), num_ctx, "POST", path, json.dumps(body).encode(),
        client=req.connection,
    )
    try:
        if resp.status != 200:
            raw = resp.read()
            try:
                err = json.loads(raw)
            except ValueError:
                err = {}
            raise HTTPError(resp.status if 400 <= resp.status < 600 else 502,
                            engine_error_message(err if isinstance(err, dict) else {}, resp.status))
        if body["stream"]:
            _stream(req, name, resp, started, load, key, top_logprobs, infill=path == "/infill")
        else:
            import http.client  # loaded by the engine request above (dx.engine.relay), not at start

            try:
                answer = json.loads(resp.read())
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise EngineError(503, f"the engine stopped while answering ({type(exc).__name__}); retry") \
                    from None
            if path == "/infill":
                answer = _infill_as_oai(answer)
            final = _final(name, answer, started, load, key, now_iso())
            _add_logprobs(final, answer, top_logprobs)
            req.send_json(200, final)
    except EngineUnavailable as exc:
        req.close_connection = True
        if not req.headers_sent:
            raise EngineError(503, f"{exc}; retry the request") from None
    finally:
        hang_up(conn, resp)  # at once, also when the client went away mid-stream: the engine stops
        cm.__exit__(None, None, None)


def _infill_as_oai(answer: dict[str, Any]) -> dict[str, Any]:
    """The engine's /infill answer (llama.cpp's own shape) in the OpenAI shape the rest reads."""
    choice, usage = infill_choice(answer)
    return {**answer, "choices": [choice], "usage": usage}


def _add_logprobs(out: dict[str, Any], event: dict[str, Any], top: int | None) -> None:
    """Ollama's ``logprobs`` on an answer or a chunk, when the request asked for them."""
    if top is None:
        return
    items = engine_logprobs(event)
    if items:
        out["logprobs"] = logprobs_to_ollama(items, top > 0)


def _final(name: str, answer: dict[str, Any], started: float, load: float, key: str, ts: str) -> dict:
    choice = (answer.get("choices") or [{}])[0]
    out: dict[str, Any] = {"model": name, "created_at": ts}
    if key == "message":
        msg = choice.get("message") or {}
        message: dict[str, Any] = {"role": "assistant", "content": msg.get("content") or ""}
        if msg.get("reasoning_content"):
            message["thinking"] = msg["reasoning_content"]
        if msg.get("tool_calls"):
            message["tool_calls"] = tool_calls_to_ollama(msg["tool_calls"])
        out["message"] = message
    else:
        msg = choice.get("message") or {}
        out["response"] = choice.get("text") if "text" in choice else msg.get("content", "")
        if msg.get("reasoning_content"):
            out["thinking"] = msg["reasoning_content"]
    out.update(done_fields(choice.get("finish_reason"), answer.get("timings"), answer.get("usage"), started, load))
    metrics.generation(name, answer.get("timings"), answer.get("usage"))
    return out


def start_ndjson(req: Request) -> Callable[[dict[str, Any]], None]:
    """Begin a chunked NDJSON response (Ollama's streaming shape); returns the line writer."""
    req.send_response(200)
    req.send_header("Content-Type", "application/x-ndjson")
    req.send_header("Transfer-Encoding", "chunked")
    req.end_headers()
    out = req.wfile

    def emit(doc: dict[str, Any]) -> None:
        line = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
        out.write(b"%x\r\n%b\r\n" % (len(line), line))

    return emit


def _stream(
    req: Request, name: str, resp: Any, started: float, load: float, key: str,
    top_logprobs: int | None = None, *, infill: bool = False,
) -> None:
    emit = start_ndjson(req)
    out = req.wfile

    finish, timings, usage = None, None, None
    tool_calls: dict[int, dict[str, Any]] = {}
    try:
        for event in sse_events(iter_chunks(resp, req.connection)):
            if infill and "error" not in event:
                event = _infill_as_oai(event)
            if "error" in event:
                err = event["error"]
                emit({"error": err.get("message", str(err)) if isinstance(err, dict) else str(err)})
                out.write(b"0\r\n\r\n")
                return
            timings = event.get("timings") or timings
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                finish = choice.get("finish_reason") or finish
                if key == "message":
                    delta = choice.get("delta") or {}
                    for tc in delta.get("tool_calls") or []:
                        slot = tool_calls.setdefault(tc.get("index", 0), {"function": {"name": "", "arguments": ""}})
                        if tc.get("id"):
                            slot["id"] = tc["id"]
                        fn = tc.get("function") or {}
                        slot["function"]["name"] += fn.get("name") or ""
                        slot["function"]["arguments"] += fn.get("arguments") or ""
                    text = delta.get("content")
                    thinking = delta.get("reasoning_content")
                    if text or thinking:
                        msg: dict[str, Any] = {"role": "assistant", "content": text or ""}
                        if thinking:
                            msg["thinking"] = thinking
                        line: dict[str, Any] = {"model": name, "created_at": now_iso(), "message": msg, "done": False}
                        _add_logprobs(line, event, top_logprobs)
                        emit(line)
                else:
                    text = choice.get("text")
                    delta = choice.get("delta") or {}
                    if text is None:
                        text = delta.get("content")
                    thinking = delta.get("reasoning_content")
                    if text or thinking:
                        line = {"model": name, "created_at": now_iso(), "response": text or "", "done": False}
                        if thinking:
                            line["thinking"] = thinking
                        _add_logprobs(line, event, top_logprobs)
                        emit(line)
    except EngineUnavailable as exc:
        emit({"error": f"{exc}; retry the request"})
        out.write(b"0\r\n\r\n")
        raise
    final: dict[str, Any] = {"model": name, "created_at": now_iso()}
    if key == "message":
        final["message"] = {"role": "assistant", "content": ""}
        if tool_calls:  # Ollama sends the calls in a chunk of their own, before the final one
            calls = tool_calls_to_ollama([tool_calls[i] for i in sorted(tool_calls)])
            emit({**final, "message": {"role": "assistant", "content": "", "tool_calls": calls}, "done": False})
    else:
        final["response"] = ""
    final.update(done_fields(finish, timings, usage, started, load))
    metrics.generation(name, timings, usage)
    emit(final)
    out.write(b"0\r\n\r\n")


def embed(req: Request) -> None:
    doc = require_object(read_json(req))
    name = model_name(doc)
    texts = embed_input(doc, "input")
    truncate = check_truncate(doc)
    dims = embed_dimensions(doc)
    started = time.monotonic()
    _fields, options = map_options(doc.get("options"))  # an embedding takes only the load options
    answer, load = _embed(req, name, doc.get("keep_alive"), texts, truncate, options)
    vectors = [item.get("embedding") for item in sorted(answer.get("data", []), key=lambda d: d.get("index", 0))]
    if dims:
        vectors = [shorten_vector(v, dims) for v in vectors]
    req.send_json(200, {
        "model": name, "embeddings": vectors,
        "total_duration": int((time.monotonic() - started) * 1e9), "load_duration": int(load * 1e9),
        "prompt_eval_count": int((answer.get("usage") or {}).get("prompt_tokens", 0)),
    })


def embeddings(req: Request) -> None:
    doc = require_object(read_json(req))
    name = model_name(doc)
    prompt = embed_input(doc, "prompt")
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    _fields, options = map_options(doc.get("options"))
    answer, _load = _embed(req, name, doc.get("keep_alive"), prompt, options=options)
    data = answer.get("data") or [{}]
    req.send_json(200, {"embedding": data[0].get("embedding", [])})


def _embed(
    req: Request, name: str, keep_alive: object, texts: list[str] | str, truncate: bool = True,
    options: EngineLoad | None = None,
) -> tuple[dict[str, Any], float]:
    """Embed ``texts``; an input longer than the context is cut to it (``truncate``, Ollama's default) or
    refused with Ollama's 400 (``truncate: false``). The engine answers such an input with an error
    (a 500 "too large to process"), so the hot path pays nothing and only an over-long input is tokenized."""
    with engine_for(req.app.manager, name, keep_alive, options, purpose="embed") as (engine, load):
        try:
            status, answer = engine_json(engine, "/v1/embeddings", {"input": texts})
            if status != 200 and _too_long(answer):
                if not truncate:
                    raise BadRequest("the input length exceeds the context length")
                status, answer = engine_json(engine, "/v1/embeddings", {"input": _cut(engine, texts)})
        except EngineUnavailable as exc:
            raise EngineError(503, f"{exc}; retry the request") from None
    if status != 200:
        raise HTTPError(status if 400 <= status < 600 else 502, engine_error_message(answer, status))
    return answer, load




def _too_long(answer: dict[str, Any]) -> bool:
    message = engine_error_message(answer, 0)
    return "too large to process" in message or "larger than the max context size" in message \
        or "exceeds the available context size" in message


def _cut(engine: Any, texts: list[str] | str) -> list[list[int]]:
    """Each input as token ids, cut to what one embeddings slot holds (its BOS/EOS included)."""
    limit = max(1, engine.ctx - 2)
    out = []
    for text in [texts] if isinstance(texts, str) else texts:
        status, doc = engine_json(engine, "/tokenize", {"content": text, "add_special": False})
        tokens = doc.get("tokens") if status == 200 else None
        if not isinstance(tokens, list):
            raise EngineError(502, engine_error_message(doc, status))
        out.append(tokens[:limit])
    return out
