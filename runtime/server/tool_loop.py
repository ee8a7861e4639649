"""``dx serve --mcp``: a chat whose model may call the operator's MCP tools, with DX as the host.

The MCP tools join the request's own ``tools``; the engine is asked without streaming; when the
model calls tools DX decides, call by call, by the operator's policy (``dx.mcp.policy``):

* every call is to a tool the policy allows → DX runs them (``dx.mcp.toolbox``: schema checked,
  deadline, size cap, audited), appends the results and asks the model again, at most
  ``rounds`` times, then once more without tools so it must answer;
* a call to a denied tool → not run; the model is told it was refused (audited ``denied``);
* any call DX may not run (the client's own tool, an MCP tool under ``ask``) → the answer goes
  back to the client as ordinary ``tool_calls``, none of them run (MCP ones audited ``returned``):
  the client's own consent decides.

Pure of transport: it returns the final OpenAI chat completion; ``dx.server.openai`` and
``dx.server.ollama`` answer it in their shapes (streamed as one chunk when asked to stream).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dx.engine.lease import EngineLoad, engine_for
from dx.engine.relay import engine_json
from dx.errors import EngineError, EngineUnavailable
from dx.server import tool_calls
from dx.server.auth import key_matches
from dx.server.wire import HTTPError

if TYPE_CHECKING:  # dx.mcp (and its urllib.request, concurrent.futures) loads only with --mcp
    from dx.mcp.toolbox import Toolbox
    from dx.server.request import Handler as Request

DEFAULT_ROUNDS = 4
# dx.server.openai.generic_tool_answer, passed in (this module sits below the handlers that call it)
GenericAsk = Callable[..., "tuple[dict[str, Any], tool_calls.Parsed, float] | None"]


def engaged(req: Request, body: dict[str, Any]) -> bool:
    """Does this chat go through the tool loop? (``--mcp`` given, a message list to work on)."""
    return getattr(req.app, "mcp", None) is not None and isinstance(body.get("messages"), list)


def who(req: Request) -> str:
    """The audit log's key id: the API key's short hash, ``session`` for a browser, ``none`` without auth."""
    from dx.mcp import audit  # lazy: only a server started with --mcp gets here

    key = req.app.api_key
    if key is None:
        return "none"
    return audit.key_id(key) if key_matches(req.headers, key) else "session"


def run(req: Request, model: str, body: dict[str, Any], generic: GenericAsk, keep_alive: object = None,
        load: EngineLoad | int | None = None) -> tuple[dict[str, Any], float]:
    """The final answer (OpenAI chat completion, not streamed) and the seconds spent loading."""
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
        answer, load_s = _ask(req, generic, model, keep_alive, load, work)
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


def parsed_of(answer: dict[str, Any]) -> tool_calls.Parsed:
    """The final message as ``tool_calls.Parsed`` (for the synthesized OpenAI stream)."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    return tool_calls.Parsed(message.get("content"), list(message.get("tool_calls") or []),
                             choice.get("finish_reason") or "stop")
