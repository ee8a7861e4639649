"""Anthropic's Messages API with tools, for a model whose chat template has no tool support.

llama-server's /v1/messages turns the request into its own chat request and renders ``tools``
through the model's template; a template without tool support drops them without a word, so
``tool_choice: {"type": "any"}`` still answers text. For such a model DX translates the request
to OpenAI's chat shape, answers it in DX's generic tool-call format (``dx.server.tool_calls``),
and translates the answer back to Anthropic's message (or its SSE events when ``stream``).

Everything here is pure (request in, request out; answer in, answer out); ``dx.server.openai``
does the I/O.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from dx.errors import BadRequest
from dx.server.tool_calls import Parsed

# Sampling fields with the same meaning under both APIs, passed on as they are.
_SAME = ("max_tokens", "temperature", "top_p", "top_k")
_STOP_REASONS = {"tool_calls": "tool_use", "length": "max_tokens", "stop": "end_turn"}


# ------------------------------------------------------------------ request
def to_openai(doc: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request -> the OpenAI chat request with the same meaning.

    ``system`` becomes the system message; ``tool_use`` blocks an assistant's ``tool_calls``;
    ``tool_result`` blocks ``role: tool`` messages; ``input_schema`` a tool's ``parameters``.
    """
    out: dict[str, Any] = {"model": doc.get("model", "")}
    messages: list[dict[str, Any]] = []
    system = doc.get("system")
    if system is not None:
        text = _blocks_text(system, "system")
        if text:
            messages.append({"role": "system", "content": text})
    raw = doc.get("messages")
    if not isinstance(raw, list):
        raise BadRequest("messages: Input should be a valid list")
    for i, msg in enumerate(raw):
        messages.extend(_message(msg, i))
    out["messages"] = messages
    out["tools"] = _tools(doc.get("tools"))
    choice = _tool_choice(doc.get("tool_choice"))
    if choice is not None:
        out["tool_choice"] = choice
    for key in _SAME:
        if key in doc:
            out[key] = doc[key]
    stops = doc.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise BadRequest("stop_sequences: Input should be a valid list of strings")
        if stops:
            out["stop"] = stops
    return out


def _message(msg: object, i: int) -> list[dict[str, Any]]:
    if not isinstance(msg, dict):
        raise BadRequest(f"messages.{i}: Input should be a valid dictionary")
    role = msg.get("role")
    if role not in ("user", "assistant"):
        raise BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
    content = msg.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise BadRequest(f"messages.{i}.content: Input should be a valid string or list of content blocks")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = f"messages.{i}.content.{j}"
        if not isinstance(block, dict):
            raise BadRequest(f"{where}: Input should be a valid dictionary")
        kind = block.get("type")
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise BadRequest(f"{where}.text: Input should be a valid string")
            texts.append(block["text"])
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("name"), str) or not isinstance(block.get("id"), str):
                raise BadRequest(f"{where}: a tool_use block needs a string id and name")
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"],
                                       "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False)}})
        elif kind == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise BadRequest(f"{where}.tool_use_id: Input should be a valid string")
            text = _blocks_text(block.get("content") or "", f"{where}.content")
            if block.get("is_error") is True:
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's own earlier reasoning: not shown to a plain template
        else:
            raise BadRequest(f"{where}.type: '{str(kind)[:32]}' blocks are not supported with tools "
                             f"on this model (text, tool_use, tool_result are)")
    if role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
        if calls:
            out["tool_calls"] = calls
        elif out["content"] is None:
            out["content"] = ""
        return [out]
    return results + ([{"role": "user", "content": "\n".join(texts)}] if texts or not results else [])


def _blocks_text(value: object, where: str) -> str:
    """A string, or a list of text blocks, as one text (``system``, a ``tool_result``'s content)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for block in value:
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise BadRequest(f"{where}: Input should be a string or a list of text blocks")
            parts.append(block["text"])
        return "\n".join(parts)
    raise BadRequest(f"{where}: Input should be a string or a list of text blocks")


def _tools(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequest("tools: Input should be a valid list")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools.{i}: Input should be a valid dictionary")
        if tool.get("type", "custom") != "custom":
            raise BadRequest(f"tools.{i}.type: server tools ('{str(tool.get('type'))[:40]}') are not supported")
        if not isinstance(tool.get("name"), str) or not tool["name"].strip():
            raise BadRequest(f"tools.{i}.name: Input should be a non-empty string")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise BadRequest(f"tools.{i}.input_schema: Input should be a valid dictionary")
        fn: dict[str, Any] = {"name": tool["name"], "parameters": schema}
        if tool.get("description") is not None:
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: object) -> object:
    """``{"type": "auto"|"any"|"none"|"tool", "name"}`` -> OpenAI's auto / required / none / named."""
    if choice is None:
        return None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool" and isinstance(choice, dict) and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise BadRequest('tool_choice: Input should be {"type": "auto"}, {"type": "any"}, {"type": "none"} '
                     'or {"type": "tool", "name": ...}')


# ------------------------------------------------------------------ answer
def message(answer: dict[str, Any], parsed: Parsed, model: str) -> dict[str, Any]:
    """The engine's chat completion, read back in DX's format, as Anthropic's message."""
    content: list[dict[str, Any]] = []
    if parsed.content:
        content.append({"type": "text", "text": parsed.content})
    for call in parsed.calls:
        fn = call["function"]
        try:
            args = json.loads(fn["arguments"]) if fn["arguments"].strip() else {}
        except ValueError:
            args = {}
        content.append({"type": "tool_use", "id": _tool_use_id(call["id"]), "name": fn["name"],
                        "input": args if isinstance(args, dict) else {}})
    if not content:
        content.append({"type": "text", "text": ""})
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    return {
        "id": "msg_" + secrets.token_hex(12),
        "type": "message",
        "role": "assistant",
        "model": model or answer.get("model", ""),
        "content": content,
        "stop_reason": _STOP_REASONS.get(parsed.finish_reason, "end_turn"),
        "stop_sequence": None,
        "usage": {"input_tokens": int(usage.get("prompt_tokens") or 0),
                  "output_tokens": int(usage.get("completion_tokens") or 0)},
    }


def _tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def stream(msg: dict[str, Any]) -> bytes:
    """A whole message as Anthropic's SSE events (the answer is parsed only once complete)."""

    def event(name: str, data: dict[str, Any]) -> bytes:
        return (f"event: {name}\ndata: ".encode() + json.dumps({"type": name, **data}, separators=(",", ":"),
                                                               ensure_ascii=False).encode() + b"\n\n")

    usage = msg["usage"]
    start = {**msg, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 0}}
    parts = [event("message_start", {"message": start})]
    for i, block in enumerate(msg["content"]):
        if block["type"] == "tool_use":
            head = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"], ensure_ascii=False)}
        else:
            head = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        parts.append(event("content_block_start", {"index": i, "content_block": head}))
        parts.append(event("content_block_delta", {"index": i, "delta": delta}))
        parts.append(event("content_block_stop", {"index": i}))
    parts.append(event("message_delta", {"delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None},
                                         "usage": {"output_tokens": usage["output_tokens"]}}))
    parts.append(event("message_stop", {}))
    return b"".join(parts)
