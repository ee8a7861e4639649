"""``dx serve --mcp``: a chat whose model may call the operator's MCP tools, with DX as the host.

The MCP tools join the request's own ``tools``; when the model calls tools DX decides, call by
call, by the operator's policy (``dx.mcp.policy``):

* every call is to a tool the policy allows → DX runs them (``dx.mcp.toolbox``: schema checked,
  deadline, size cap, audited), appends the results and asks the model again, at most
  ``rounds`` times, then once more without tools so it must answer;
* a call to a denied tool → not run; the model is told it was refused (audited ``denied``);
* any call DX may not run (the client's own tool, an MCP tool under ``ask``) → the answer goes
  back to the client as ordinary ``tool_calls``, none of them run (MCP ones audited ``returned``):
  the client's own consent decides.

Each round is one engine request. Unstreamed, the loop returns the final OpenAI chat completion
and ``dx.server.openai`` / ``dx.server.ollama`` answer it in their shapes. Streamed (``on_delta``),
every round streams from the engine: each content (and thinking) delta goes to ``on_delta`` as the
engine produces it, so the client reads the answer token by token; the round's tool-call deltas
are gathered (``Round``) and decided once the round ends, so a call DX runs is never shown to the
client, and the final completion (its calls included) is returned for the handler to close the
stream with. In DX's generic format (a template without tools) the model writes
``{"response": "<text>"}``: ``ResponseText`` decodes that JSON string as it grows.

A chat the loop cannot change — ``tool_choice: "none"``, or no MCP tool offered to it — is not
``engaged``: it takes the plain path (the byte-for-byte relay on /v1).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from dx.engine.lease import EngineLoad, engine_for, open_engine
from dx.engine.props import renders_tools
from dx.engine.relay import engine_json, hang_up, iter_chunks
from dx.errors import EngineError, EngineUnavailable
from dx.server import tool_calls
from dx.server.auth import key_matches
from dx.server.ollama_wire import sse_events
from dx.server.wire import HTTPError

if TYPE_CHECKING:  # dx.mcp (and its urllib.request, concurrent.futures) loads only with --mcp
    from dx.mcp.toolbox import Toolbox
    from dx.server.request import Handler as Request

DEFAULT_ROUNDS = 4
# dx.server.openai.generic_tool_answer, passed in (this module sits below the handlers that call it)
GenericAsk = Callable[..., "tuple[dict[str, Any], tool_calls.Parsed, float] | None"]
# a streamed round's deltas: (OpenAI delta with "content" and/or "reasoning_content", the engine's event)
OnDelta = Callable[[dict[str, Any], dict[str, Any]], None]


def engaged(req: Request, body: dict[str, Any]) -> bool:
    """Does this chat go through the tool loop? ``--mcp`` given, a message list to work on, and at
    least one MCP tool the model may call in it: with ``tool_choice: "none"``, or every MCP tool
    denied or shadowed by the client's own of the same name, the loop could change nothing."""
    box: Toolbox | None = getattr(req.app, "mcp", None)
    if box is None or not isinstance(body.get("messages"), list) or body.get("tool_choice") == tool_calls.NONE:
        return False
    client_names = {t["function"]["name"] for t in tool_calls.check_tools(body.get("tools"))}
    return bool(box.offered(client_names))


def who(req: Request) -> str:
    """The audit log's key id: the API key's short hash, ``session`` for a browser, ``none`` without auth."""
    from dx.mcp import audit  # lazy: only a server started with --mcp gets here

    key = req.app.api_key
    if key is None:
        return "none"
    return audit.key_id(key) if key_matches(req.headers, key) else "session"


def run(req: Request, model: str, body: dict[str, Any], generic: GenericAsk, keep_alive: object = None,
        load: EngineLoad | int | None = None, on_delta: OnDelta | None = None) -> tuple[dict[str, Any], float]:
    """The final answer (OpenAI chat completion) and the seconds spent loading.

    With ``on_delta`` every round is streamed and its content goes there as it is produced; the
    returned completion then carries the last round's content (already sent) and its calls (not yet).
    """
    box: Toolbox = req.app.mcp
    rounds: int = getattr(req.app, "tool_rounds", DEFAULT_ROUNDS)
    client_tools = tool_calls.check_tools(body.get("tools"))
    client_names = {t["function"]["name"] for t in client_tools}
    work = copy.deepcopy(body)
    work["stream"] = False
    work.pop("stream_options", None)
    work["tools"] = client_tools + box.openai_tools(client_names)
    if not work["tools"]:
        work.pop("tools")
    messages = work["messages"]
    key = who(req)
    load_total = 0.0
    for round_no in range(rounds + 1):
        if round_no == rounds and "tools" in work:
            work["tool_choice"] = tool_calls.NONE  # the last round: an answer, no more calls
        if on_delta is None:
            answer, load_s = _ask(req, generic, model, keep_alive, load, work)
        else:
            answer, load_s = _ask_streamed(req, model, keep_alive, load, work, on_delta)
        load_total += load_s
        message = ((answer.get("choices") or [{}])[0]).get("message") or {}
        calls = message.get("tool_calls") or []
        if not calls or round_no == rounds:  # the last round's answer goes as it is: nothing more runs
            return answer, load_total
        results = handle_calls(box, calls, client_names, key=key, model=model)
        if results is None:
            return answer, load_total
        messages.append({"role": "assistant", "content": message.get("content"), "tool_calls": calls})
        messages.extend(results)
        if work.get("tool_choice") not in (None, tool_calls.AUTO, tool_calls.NONE):
            work["tool_choice"] = tool_calls.AUTO  # "required" again would never let the model answer
    return answer, load_total


def handle_calls(box: Toolbox, calls: list[dict[str, Any]], client_names: set[str], *, key: str,
                 model: str) -> list[dict[str, Any]] | None:
    """The tool messages for calls DX may settle (run or refuse), or None: they go back to the client.

    All or nothing: when one call is not DX's to run, none is run, so the client sees the model's
    whole turn and decides every call of it.
    """
    from dx.mcp import audit, policy  # lazy: only a server started with --mcp gets here

    bound = []
    for call in calls:
        fn = call.get("function") or {}
        name = fn.get("name")
        b = None if name in client_names or not isinstance(name, str) else box.tools.get(name)
        bound.append((b, call, _arguments(fn.get("arguments"))))
    if any(b is None or b.decision == policy.ASK for b, _c, _a in bound):
        for b, _call, args in bound:
            if b is not None:
                box.note(b, args, audit.RETURNED, key=key, model=model)
        return None
    out = []
    for b, call, args in bound:
        assert b is not None
        if b.decision == policy.DENY:
            box.note(b, args, audit.DENIED, key=key, model=model)
            text = f"error: refused: the operator's policy does not allow {b.key}"
        else:
            text = box.run(b, args, key=key, model=model).text
        out.append({"role": "tool", "tool_call_id": call.get("id") or "", "content": text})
    return out


def _arguments(args: object) -> str:
    if isinstance(args, str):
        return args
    return json.dumps(args if args is not None else {}, ensure_ascii=False)


def _ask(req: Request, generic: GenericAsk, model: str, keep_alive: object, load: EngineLoad | int | None,
         work: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """One round: DX's generic format for a template without tools, else the engine's own parsing."""
    ask = generic(req, model, keep_alive, load, work)
    if ask is not None:
        answer, parsed, load_s = ask
        return tool_calls.openai_answer(answer, parsed), load_s
    payload = work
    if work.get("tools"):
        tools = tool_calls.check_tools(work["tools"])
        native = tool_calls.native_body(work, tools, tool_calls.check_tool_choice(work.get("tool_choice"), tools))
        payload = native or work
    with engine_for(req.app.manager, model, keep_alive, load) as (engine, load_s):
        try:
            status, answer = engine_json(engine, "/v1/chat/completions", payload)
        except EngineUnavailable as exc:
            raise EngineError(503, f"{exc}; retry the request") from None
    if status != 200:
        err = answer.get("error")
        text = str(err.get("message") or err) if isinstance(err, dict) else str(err or f"the engine answered {status}")
        raise HTTPError(status if 400 <= status < 600 else 502, text)
    return answer, load_s


def _ask_streamed(req: Request, model: str, keep_alive: object, load: EngineLoad | int | None,
                  work: dict[str, Any], on_delta: OnDelta) -> tuple[dict[str, Any], float]:
    """One round streamed from the engine: its content to ``on_delta`` as it comes, the completion at the end.

    The same request ``_ask`` makes (DX's generic format for a template without tools, else the
    engine's own parsing), with ``stream`` on; a tool schema llama.cpp's grammar cannot take is
    relaxed to any object, as ``dx.server.openai.generic_tool_answer`` does.
    """
    tools = tool_calls.check_tools(work.get("tools"))
    choice = tool_calls.check_tool_choice(work.get("tool_choice"), tools)
    with engine_for(req.app.manager, model, keep_alive, load) as (engine, load_total):
        generic = bool(tools) and not renders_tools(engine)
    for free in (False, True):
        if generic:
            payload = tool_calls.rewrite(work, tools, choice, free_arguments=free)
        else:
            payload = (tool_calls.native_body(work, tools, choice) if tools else None) or work
        payload = {**payload, "stream": True, "stream_options": {"include_usage": True}}
        cm, _engine, load_s, conn, resp = open_engine(
            req.app.manager, model, keep_alive, load, "POST", "/v1/chat/completions", json.dumps(payload).encode(),
            client=req.connection)
        load_total += load_s
        try:
            if resp.status != 200:
                status, message = resp.status, _error_text(resp.read(), resp.status)
                if generic and not free and status == 400 and choice.mode != tool_calls.NONE \
                        and "schema" in message.lower():
                    continue
                raise HTTPError(status if 400 <= status < 600 else 502, message)
            decoder = ResponseText() if generic and choice.mode != tool_calls.NONE else None
            answer = Round(on_delta, decoder).read(sse_events(iter_chunks(resp, req.connection)))
        except EngineUnavailable as exc:
            raise EngineError(503, f"{exc}; retry the request") from None
        finally:
            hang_up(conn, resp)
            cm.__exit__(None, None, None)
        if generic:
            parsed = tool_calls.read_answer(answer, choice)
            if parsed.content and decoder is not None and not decoder.sent:  # not a streamable string: whole
                on_delta({"content": parsed.content}, answer)
            answer = tool_calls.openai_answer(answer, parsed)
        return answer, load_total
    raise AssertionError("unreachable")  # the second try either returns or raises


def _error_text(raw: bytes, status: int) -> str:
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {}
    err = doc.get("error") if isinstance(doc, dict) else None
    return str(err.get("message") or err) if isinstance(err, dict) else str(err or f"the engine answered {status}")


class Round:
    """One streamed engine answer gathered into a chat completion, its text passed on as it arrives.

    Content and thinking deltas go to ``on_delta`` at once (through ``decoder`` in DX's generic
    format, where the raw text is JSON); tool-call deltas (llama-server's: ``index``, then ``id``,
    ``function.name`` and pieces of ``function.arguments``) are joined by index and only returned.
    """

    def __init__(self, on_delta: OnDelta, decoder: ResponseText | None = None) -> None:
        self.on_delta = on_delta
        self.decoder = decoder

    def read(self, events: Iterator[dict[str, Any]]) -> dict[str, Any]:
        head: dict[str, Any] = {}
        text, thinking = [], []
        calls: dict[int, dict[str, Any]] = {}
        finish, usage, timings = None, None, None
        for event in events:
            if "error" in event:
                err = event["error"]
                raise EngineError(502, str(err.get("message") or err) if isinstance(err, dict) else str(err))
            if not head:
                head = {k: event[k] for k in ("id", "created", "model", "system_fingerprint") if k in event}
            usage = event.get("usage") or usage
            timings = event.get("timings") or timings
            for choice in event.get("choices") or []:
                finish = choice.get("finish_reason") or finish
                delta = choice.get("delta") or {}
                for tc in delta.get("tool_calls") or []:
                    slot = calls.setdefault(tc.get("index", 0), {"id": "", "type": "function",
                                                                 "function": {"name": "", "arguments": ""}})
                    if tc.get("id"):
                        slot["id"] = tc["id"]
                    fn = tc.get("function") or {}
                    slot["function"]["name"] += fn.get("name") or ""
                    slot["function"]["arguments"] += fn.get("arguments") or ""
                raw = delta.get("content") or ""
                text.append(raw)
                shown = self.decoder.feed(raw) if self.decoder is not None and raw else raw
                out = {}
                if shown:
                    out["content"] = shown
                if delta.get("reasoning_content"):
                    thinking.append(delta["reasoning_content"])
                    out["reasoning_content"] = delta["reasoning_content"]
                if out:
                    self.on_delta(out, event)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
        if thinking:
            message["reasoning_content"] = "".join(thinking)
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        answer = {**head, "object": "chat.completion",
                  "choices": [{"index": 0, "message": message, "finish_reason": finish or "stop"}]}
        if usage:
            answer["usage"] = usage
        if timings:
            answer["timings"] = timings
        return answer


_OPENING = re.compile(r'\s*\{\s*"((?:[^"\\]|\\.)*)"\s*:\s*(\S)')


class ResponseText:
    """The text of ``{"response": "<text>"}`` (DX's generic format) decoded as the JSON grows.

    Nothing is shown until the opening reads ``{"response": "``; any other opening (``tool_calls``,
    a ``response`` that is not a string) shows nothing. Escapes are decoded whole: a piece ending
    inside ``\\uXXXX`` (or between a surrogate pair's halves) waits for the rest.
    """

    def __init__(self) -> None:
        self.state = "opening"
        self.raw = ""
        self.pos = 0
        self.sent = False

    def feed(self, piece: str) -> str:
        self.raw += piece
        if self.state == "opening":
            m = _OPENING.match(self.raw)
            if m is None:
                if len(self.raw) > 256:
                    self.state = "off"
                return ""
            if m.group(1) != "response" or m.group(2) != '"':
                self.state = "off"
                return ""
            self.state, self.pos = "string", m.end()
        if self.state != "string":
            return ""
        raw, i = self.raw, self.pos
        while i < len(raw):
            c = raw[i]
            if c == '"':
                self.state = "closed"
                break
            if c != "\\":
                i += 1
                continue
            step = 2
            if raw[i + 1:i + 2] == "u":
                step = 6
                if i + 6 <= len(raw) and 0xD800 <= _hex(raw[i + 2:i + 6]) < 0xDC00:
                    step = 12  # a high surrogate: decode it with its low half
            if i + step > len(raw):
                break
            i += step
        segment, self.pos = raw[self.pos:i], i
        if not segment:
            return ""
        try:
            text = json.loads('"' + segment + '"', strict=False)
        except ValueError:
            text = segment
        self.sent = self.sent or bool(text)
        return text


def _hex(digits: str) -> int:
    try:
        return int(digits, 16)
    except ValueError:
        return -1


def parsed_of(answer: dict[str, Any]) -> tool_calls.Parsed:
    """The final message as ``tool_calls.Parsed`` (for the synthesized OpenAI stream)."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    return tool_calls.Parsed(message.get("content"), list(message.get("tool_calls") or []),
                             choice.get("finish_reason") or "stop")
