"""DX's generic tool-call format: tools for a model whose chat template has no tool support.

llama-server renders ``tools`` through the model's template and parses the calls back, but only
for templates that know tools; for any other (SmolLM2's, most small models') it drops them
without a word. For those DX does what llama.cpp's former "generic" format did: the tools go
into the system message as JSON Schema, the answer is constrained (``response_format`` with a
JSON schema, which the engine turns into a grammar) to either

    {"tool_calls": [{"name": "<tool>", "arguments": {...}}]}   or   {"response": "<text>"}

and DX parses that back into each API's tool-call shape. ``tool_choice`` picks the branches:
"required" (or one named function) allows only the first, "none" sends no tools at all,
"auto" either. A conversation that already holds calls and their results is rendered as text
the plain template can carry (the assistant's JSON, a user message with the tool's answer),
so the next round works.

Everything here is pure (request in, request out; answer in, answer out); the server's
handlers (``dx.server.openai``, ``dx.server.ollama``) do the I/O.
"""

from __future__ import annotations

import copy
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from dx.errors import BadRequest

AUTO, NONE, REQUIRED = "auto", "none", "required"
_FREE_OBJECT: dict[str, Any] = {"type": "object"}
# Fields of an OpenAI chat request that only the template path understands: never sent to the engine here.
_TOOL_FIELDS = ("tools", "tool_choice", "parallel_tool_calls")


@dataclass(frozen=True)
class Choice:
    """``tool_choice`` resolved: the mode, and the one function it names (or None)."""

    mode: str = AUTO
    name: str | None = None


@dataclass
class Parsed:
    """The model's answer in DX's format, read back: text, or calls (``arguments`` as JSON text)."""

    content: str | None
    calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"


# ------------------------------------------------------------------ request checks
def check_tools(tools: object) -> list[dict[str, Any]]:
    """``tools`` as OpenAI and Ollama send it; a malformed one is the client's mistake (400)."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("tools must be a list")
    out = []
    names: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools[{i}] must be an object")
        kind = tool.get("type", "function")
        if kind != "function":
            raise BadRequest(f'tools[{i}].type must be "function"')
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise BadRequest(f"tools[{i}].function must be an object")
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            raise BadRequest(f"tools[{i}].function.name must be a non-empty string")
        if name in names:
            raise BadRequest(f"tools[{i}].function.name '{name[:64]}' is given twice")
        names.add(name)
        description = fn.get("description")
        if description is not None and not isinstance(description, str):
            raise BadRequest(f"tools[{i}].function.description must be a string")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise BadRequest(f"tools[{i}].function.parameters must be a JSON schema object")
        clean: dict[str, Any] = {"name": name}
        if description:
            clean["description"] = description
        clean["parameters"] = params if params else {"type": "object", "properties": {}}
        out.append({"type": "function", "function": clean})
    return out


def check_tool_choice(choice: object, tools: list[dict[str, Any]]) -> Choice:
    """``tool_choice``: "auto" / "none" / "required" / {"type": "function", "function": {"name": X}}."""
    if choice is None or choice == AUTO:
        return Choice(AUTO)
    if choice in (NONE, REQUIRED):
        if choice == REQUIRED and not tools:
            raise BadRequest('tool_choice "required" needs tools')
        return Choice(str(choice))
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if choice.get("type", "function") == "function" and isinstance(name, str):
            if name not in {t["function"]["name"] for t in tools}:
                raise BadRequest(f"tool_choice names function '{name[:64]}', which is not in tools")
            return Choice(REQUIRED, name)
    raise BadRequest('tool_choice must be "auto", "none", "required" or '
                     '{"type": "function", "function": {"name": ...}}')


# ------------------------------------------------------------------ request rewrite
def answer_schema(tools: list[dict[str, Any]], choice: Choice, *, free_arguments: bool = False,
                  response: dict[str, Any] | None = None, parallel: bool = False) -> dict[str, Any]:
    """The JSON schema the engine constrains the answer to.

    Each call's ``arguments`` follow its tool's ``parameters``; ``free_arguments`` relaxes them to
    any object (for a schema llama.cpp's json-schema-to-grammar cannot take). ``response`` is the
    client's own answer schema (``response_format``), else a string. One call per answer unless
    the client asked for ``parallel_tool_calls`` (as llama.cpp's generic format did): a small
    model otherwise repeats the same call until ``max_tokens``.
    """
    picked = [t["function"] for t in tools if choice.name is None or t["function"]["name"] == choice.name]
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "const": fn["name"]},
                "arguments": _FREE_OBJECT if free_arguments else fn["parameters"],
            },
            "required": ["name", "arguments"],
        }
        for fn in picked
    ]
    tool_calls = {
        "type": "object",
        "properties": {
            "tool_calls": {"type": "array", "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
                           "minItems": 1, **({} if parallel else {"maxItems": 1})},
        },
        "required": ["tool_calls"],
    }
    if choice.mode == REQUIRED:
        return tool_calls
    reply = {"type": "object", "properties": {"response": response or {"type": "string"}}, "required": ["response"]}
    return {"anyOf": [tool_calls, reply]}


def system_prompt(tools: list[dict[str, Any]], choice: Choice) -> str:
    """What the model is told: the tools (as JSON Schema) and the one answer format it may use."""
    listed = [t["function"] for t in tools if choice.name is None or t["function"]["name"] == choice.name]
    lines = [
        "You can call the following tools. Each has a name, a description and a JSON Schema of its arguments:",
        json.dumps(listed, indent=2, ensure_ascii=False),
        "",
    ]
    call = '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}'
    if choice.name is not None:
        lines.append(f'Call the tool "{choice.name}". Answer in JSON only: {call}')
    elif choice.mode == REQUIRED:
        lines.append(f"Call one of the tools. Answer in JSON only: {call}")
    else:
        lines.append("Answer in JSON only, either with `tool_calls` (to call tools) or with `response` "
                     f'(to reply to the user directly): {call} or {{"response": "<your reply>"}}')
    return "\n".join(lines)


def rewrite(body: dict[str, Any], tools: list[dict[str, Any]], choice: Choice, *,
            free_arguments: bool = False) -> dict[str, Any]:
    """An OpenAI chat request with tools -> the engine request in DX's format (never streamed).

    The history's calls and results become text; with ``tool_choice: "none"`` nothing about
    tools is sent and the answer is not constrained.
    """
    raw = body.get("messages")
    if not isinstance(raw, list) or not all(isinstance(m, dict) for m in raw):
        raise BadRequest("messages must be a list of message objects")
    out = {k: copy.deepcopy(v) for k, v in body.items() if k not in _TOOL_FIELDS and k != "stream_options"}
    out["stream"] = False
    active = choice.mode != NONE and bool(tools)
    messages = render_history(out.get("messages") or [], json_answers=active)
    if not active:
        out["messages"] = messages
        return out
    if out.get("grammar"):
        raise BadRequest("Cannot use custom grammar constraints with tools.")  # llama-server's words
    response = _response_schema(out.pop("response_format", None))
    out.pop("json_schema", None)
    out["messages"] = _with_system(messages, system_prompt(tools, choice))
    out["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "dx_tool_answer",
                        "schema": answer_schema(tools, choice, free_arguments=free_arguments, response=response,
                                                parallel=body.get("parallel_tool_calls") is True)},
    }
    return out


def _response_schema(fmt: object) -> dict[str, Any] | None:
    """The client's ``response_format`` schema, for the ``response`` branch (tools and JSON output together)."""
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":
        wrapper = fmt.get("json_schema")
        schema = wrapper.get("schema") if isinstance(wrapper, dict) else None
        return schema if isinstance(schema, dict) and schema else _FREE_OBJECT
    if fmt.get("type") == "json_object":
        schema = fmt.get("schema")
        return schema if isinstance(schema, dict) and schema else _FREE_OBJECT
    return None


def _with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """The tools' description joins the first system message (a template may take only one), or opens the chat."""
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        content = first.get("content")
        if isinstance(content, list):
            first["content"] = [*content, {"type": "text", "text": "\n\n" + text}]
        else:
            first["content"] = f"{content}\n\n{text}" if content else text
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def render_history(messages: list[dict[str, Any]], *, json_answers: bool = True) -> list[dict[str, Any]]:
    """Calls and tool results as text a template without tool support carries.

    An assistant's calls become the JSON it would have produced; a tool's result (``role: tool``,
    found by ``tool_call_id`` or named by ``name``/Ollama's ``tool_name``) becomes a user message
    ``{"tool_response": {"tool": ..., "content": ...}}``, in the order of the calls. With ``json_answers`` an assistant's plain
    reply is shown as ``{"response": ...}`` too, so the history matches the format asked for.
    """
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for msg in messages:
        role = msg.get("role")
        if role == "assistant" and msg.get("tool_calls"):
            calls = []
            for call in msg["tool_calls"] if isinstance(msg["tool_calls"], list) else []:
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict):
                    continue
                if isinstance(call.get("id"), str):
                    names[call["id"]] = str(fn.get("name", ""))
                calls.append({"name": fn.get("name", ""), "arguments": _arguments_object(fn.get("arguments"))})
            out.append({"role": "assistant", "content": json.dumps({"tool_calls": calls}, ensure_ascii=False)})
        elif role == "assistant" and json_answers and isinstance(msg.get("content"), str):
            out.append({"role": "assistant", "content": json.dumps({"response": msg["content"]}, ensure_ascii=False)})
        elif role in ("tool", "function"):
            name = msg.get("name") or msg.get("tool_name") or names.get(str(msg.get("tool_call_id")), "")
            # no call id: the calls above are rendered without one (results follow them in order), and a
            # random id in the prompt only gives the model noise to copy and makes equal chats differ
            result = {"tool": name, "content": _text(msg.get("content"))}
            out.append({"role": "user", "content": json.dumps({"tool_response": result}, ensure_ascii=False)})
        else:
            clean = {k: v for k, v in msg.items() if k not in ("tool_calls", "tool_call_id", "tool_name")}
            if clean.get("content") is None:
                clean["content"] = ""
            out.append(clean)
    return out


def _arguments_object(args: object) -> object:
    if isinstance(args, str):
        try:
            return json.loads(args) if args.strip() else {}
        except ValueError:
            return args
    return args if args is not None else {}


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # typed parts: their text
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "" if content is None else json.dumps(content, ensure_ascii=False)


# ------------------------------------------------------------------ answers
def call_id() -> str:
    return "call_" + secrets.token_urlsafe(18).replace("-", "a").replace("_", "b")


def parse_answer(text: str | None, finish_reason: str | None) -> Parsed:
    """The engine's text in DX's format -> calls or content.

    Anything else (an answer cut by ``max_tokens``, or a plain answer with ``tool_choice: "none"``)
    is passed on as the text it is, with the engine's finish reason.
    """
    text = text or ""
    finish = finish_reason or "stop"
    try:
        doc = json.loads(text)
    except ValueError:
        return Parsed(text, [], finish)
    if isinstance(doc, dict) and isinstance(doc.get("tool_calls"), list) and doc["tool_calls"]:
        calls = []
        for call in doc["tool_calls"]:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                return Parsed(text, [], finish)
            args = call.get("arguments", {})
            calls.append({
                "id": call_id(), "type": "function",
                "function": {"name": call["name"],
                             "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)},
            })
        return Parsed(None, calls, "tool_calls")
    if isinstance(doc, dict) and set(doc) == {"response"}:
        reply = doc["response"]
        return Parsed(reply if isinstance(reply, str) else json.dumps(reply, ensure_ascii=False), [], finish)
    return Parsed(text, [], finish)


def read_answer(answer: dict[str, Any], choice: Choice) -> Parsed:
    """The engine's chat completion (in DX's format unless ``tool_choice`` was "none"), read back."""
    first = (answer.get("choices") or [{}])[0]
    text = (first.get("message") or {}).get("content")
    if choice.mode == NONE:
        return Parsed(text or "", [], first.get("finish_reason") or "stop")
    return parse_answer(text, first.get("finish_reason"))


def native_body(body: dict[str, Any], tools: list[dict[str, Any]], choice: Choice) -> dict[str, Any] | None:
    """For a template with tool support: the request to send instead, or None to send it as it came.

    llama-server takes ``tool_choice`` only as a string (an object silently means "auto"), so a
    named function becomes "required" with that one tool.
    """
    if choice.name is None:
        return None
    out = dict(body)
    out["tools"] = [t for t in tools if t["function"]["name"] == choice.name]
    out["tool_choice"] = REQUIRED
    return out


def openai_answer(answer: dict[str, Any], parsed: Parsed) -> dict[str, Any]:
    """The engine's chat completion with its message replaced by the parsed one (OpenAI's shape)."""
    out = dict(answer)
    choice = dict((answer.get("choices") or [{}])[0])
    message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
    if parsed.calls:
        message["tool_calls"] = parsed.calls
    choice.update({"index": 0, "message": message, "finish_reason": parsed.finish_reason})
    out["choices"] = [choice]
    return out


def openai_stream(answer: dict[str, Any], parsed: Parsed, *, include_usage: bool, head: bool = True) -> bytes:
    """A whole answer as OpenAI's SSE chunks (role, content or calls, finish, usage, ``[DONE]``).

    DX's format is parsed only once the answer is complete, so the stream is synthesized from it.
    ``head=False``: the role and the content were streamed already (``dx serve --mcp``); only the rest.
    """
    base = {"id": answer.get("id") or "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion.chunk",
            "created": answer.get("created", 0), "model": answer.get("model", "")}
    for key in ("system_fingerprint",):
        if key in answer:
            base[key] = answer[key]

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        doc = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return b"data: " + json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"

    parts = [chunk({"role": "assistant", "content": None if parsed.calls else ""})] if head else []
    if parsed.content and head:
        parts.append(chunk({"content": parsed.content}))
    for i, call in enumerate(parsed.calls):
        fn = call["function"]
        parts.append(chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                            "function": {"name": fn["name"], "arguments": ""}}]}))
        parts.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": fn["arguments"]}}]}))
    timings = {"timings": answer["timings"]} if isinstance(answer.get("timings"), dict) else {}
    parts.append(chunk({}, parsed.finish_reason, **timings))
    if include_usage and isinstance(answer.get("usage"), dict):
        parts.append(b"data: " + json.dumps({**base, "choices": [], "usage": answer["usage"]},
                                            separators=(",", ":")).encode() + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def include_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True
