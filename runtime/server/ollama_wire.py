"""Ollama's API shapes, translated onto the engine's OpenAI-compatible routes.

Requests are validated and mapped here (pure functions, unit-tested); the
server streams the engine's SSE and turns each event into one Ollama NDJSON
line. Durations in Ollama's answers are nanoseconds; the counts and durations
come from the engine's own ``timings`` so they measure the engine, not DX.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

from dx.engine.lease import EngineLoad
from dx.errors import BadRequest
from dx.server.tool_calls import check_tools

NS = 1_000_000_000



# ------------------------------------------------------------------ options
# Ollama option -> engine (llama-server) request field, with the JSON type it must have.
_NUMBER = (int, float)
_OPTION_MAP: dict[str, tuple[str, tuple[type, ...]]] = {
    "temperature": ("temperature", _NUMBER),
    "top_p": ("top_p", _NUMBER),
    "top_k": ("top_k", (int,)),
    "min_p": ("min_p", _NUMBER),
    "typical_p": ("typical_p", _NUMBER),
    "seed": ("seed", (int,)),
    "repeat_penalty": ("repeat_penalty", _NUMBER),
    "repeat_last_n": ("repeat_last_n", (int,)),
    "presence_penalty": ("presence_penalty", _NUMBER),
    "frequency_penalty": ("frequency_penalty", _NUMBER),
    "mirostat": ("mirostat", (int,)),
    "mirostat_tau": ("mirostat_tau", _NUMBER),
    "mirostat_eta": ("mirostat_eta", _NUMBER),
    "num_keep": ("n_keep", (int,)),
    "num_predict": ("max_tokens", (int,)),
    "stop": ("stop", (list, str)),
}
# Load-time options: they change how the engine is started, not one request. Those the pinned
# llama-server has a flag for are honoured by (re)starting the engine with it, as Ollama does.
_LOAD_INT = {"num_thread": 0, "num_batch": 1, "num_gpu": -1, "main_gpu": 0}  # the smallest value accepted
_LOAD_BOOL = ("use_mmap", "use_mlock", "numa")
# Gone from current Ollama (a warning in its log, the request served) and from llama-server: ignored alike.
_RETIRED_OPTIONS = frozenset(
    {"low_vram", "f16_kv", "logits_all", "vocab_only", "penalize_newline", "tfs_z", "num_gqa",
     "rope_frequency_base", "rope_frequency_scale"}
)


def load_args(options: dict[str, Any]) -> tuple[str, ...] | None:
    """Ollama's load options -> llama-server flags (None: the request names none, so no reload).

    ``num_thread`` 0, ``num_gpu`` -1 and ``use_mmap: true`` are the engine's defaults (no flag).
    A wrong type or range is a 400 in Ollama's words.
    """
    named = False
    args: list[str] = []
    flags = {"num_thread": "-t", "num_batch": "-b", "num_gpu": "-ngl", "main_gpu": "-mg"}
    for key, least in _LOAD_INT.items():
        value = options.get(key)
        if value is None:
            continue
        named = True
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON numbers: Ollama takes 4.0 as 4
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f'option "{key}" must be of type integer')
        if not least <= value <= 1 << 20:
            raise BadRequest(f'option "{key}" must be an integer >= {least}')
        if (key, value) in (("num_thread", 0), ("num_gpu", -1)):
            continue
        args += [flags[key], str(value)]
        if key == "num_batch":
            args += ["-ub", str(value)]  # Ollama's micro-batch follows num_batch
    modes: dict[str, bool] = {}
    for key in _LOAD_BOOL:
        value = options.get(key)
        if value is None:
            continue
        named = True
        if not isinstance(value, bool):
            raise BadRequest(f'option "{key}" must be of type boolean')
        modes[key] = value
    mmap, mlock = modes.get("use_mmap", True), modes.get("use_mlock", False)
    if not mmap or mlock:  # this llama-server's --load-mode replaces --no-mmap / --mlock
        args += ["--load-mode", {(False, False): "none", (False, True): "mlock", (True, True): "mmap+mlock"}[
            (mmap, mlock)]]
    if modes.get("numa"):
        args += ["--numa", "distribute"]
    return tuple(args) if named else None


def map_options(options: object) -> tuple[dict[str, Any], EngineLoad | None]:
    """Ollama ``options`` -> (engine sampling fields, load options or None when the request names none)."""
    if options is None:
        return {}, None
    if not isinstance(options, dict):
        raise BadRequest("options must be a JSON object")
    out: dict[str, Any] = {}
    num_ctx = None
    for key, value in options.items():
        if key == "num_ctx":
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not (0 < value <= 1 << 20):
                raise BadRequest("options.num_ctx must be a positive integer")
            num_ctx = value
            continue
        if key in _RETIRED_OPTIONS or key in _LOAD_INT or key in _LOAD_BOOL:
            continue
        spec = _OPTION_MAP.get(key)
        if spec is None:
            continue  # Ollama ignores unknown options too
        field, types = spec
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            raise BadRequest(f"options.{key} has the wrong type ({type(value).__name__})")
        if key == "stop" and isinstance(value, list) and not all(isinstance(s, str) for s in value):
            raise BadRequest("options.stop must be a list of strings")
        if key == "num_predict" and value < 0:
            continue  # -1 (infinite) / -2 (fill context): the engine's default
        out[field] = value
    args = load_args(options)
    if num_ctx is None and args is None:
        return out, None  # the hot path: nothing about the engine
    return out, EngineLoad(ctx=num_ctx, args=args)


def map_format(fmt: object) -> dict[str, Any]:
    """Ollama ``format`` ("json" or a JSON schema) -> OpenAI ``response_format``."""
    if fmt in (None, ""):
        return {}
    if fmt == "json":
        return {"response_format": {"type": "json_object"}}
    if isinstance(fmt, dict):
        return {"response_format": {"type": "json_schema", "json_schema": {"schema": fmt}}}
    raise BadRequest('format must be "json" or a JSON schema object')


# ------------------------------------------------------------------ request checks
def require_object(doc: object) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise BadRequest("the request body must be a JSON object")
    return doc


def model_name(doc: dict[str, Any], *, required: bool = True) -> str:
    name = doc.get("model", doc.get("name"))
    if name is None or name == "":
        if required:
            raise BadRequest("model is required")
        return ""
    if not isinstance(name, str):
        raise BadRequest("model must be a string")
    return name


def flag(doc: dict[str, Any], key: str, default: bool) -> bool:
    """A boolean field: absent or null means ``default``; anything but true/false is the client's mistake."""
    value = doc.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be true or false")
    return value


def is_stream(doc: dict[str, Any]) -> bool:
    return flag(doc, "stream", True)


def _messages(raw: object) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest("messages must be a list")
    out = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict):
            raise BadRequest(f"messages[{i}] must be an object")
        role = msg.get("role")
        if not isinstance(role, str) or not role:
            raise BadRequest(f"messages[{i}].role must be a string")
        content = msg.get("content", "")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string")
        item: dict[str, Any] = {"role": role, "content": content}
        images = msg.get("images")
        if images:
            if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
                raise BadRequest(f"messages[{i}].images must be a list of base64 strings")
            item["content"] = image_parts(content, images)
        calls = msg.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                raise BadRequest(f"messages[{i}].tool_calls must be a list")
            item["tool_calls"] = [_tool_call_to_openai(c, i, n) for n, c in enumerate(calls)]
        if isinstance(msg.get("thinking"), str) and msg["thinking"]:
            item["reasoning_content"] = msg["thinking"]  # an earlier turn's thinking, back into the template
        for key in ("tool_call_id", "name"):
            if isinstance(msg.get(key), str):
                item[key] = msg[key]
        if isinstance(msg.get("tool_name"), str) and "name" not in item:
            item["name"] = msg["tool_name"]
        out.append(item)
    return out


def _tool_call_to_openai(call: object, i: int, n: int) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise BadRequest(f"messages[{i}].tool_calls[{n}] must have function.name")
    args = fn.get("arguments", {})
    return {
        "id": call.get("id") or f"call_{i}_{n}",  # type: ignore[union-attr]
        "type": "function",
        "function": {"name": fn["name"], "arguments": args if isinstance(args, str) else json.dumps(args)},
    }


def chat_request(doc: dict[str, Any]) -> tuple[dict[str, Any], EngineLoad | None]:
    """/api/chat body -> (engine /v1/chat/completions body, load options)."""
    fields, num_ctx = map_options(doc.get("options"))
    body: dict[str, Any] = {"messages": _messages(doc.get("messages")), **fields, **map_format(doc.get("format"))}
    tools = doc.get("tools")
    if tools:
        check_tools(tools)  # a malformed tool is a 400 here, not the engine's 500
        body["tools"] = tools
    return _streaming(body, is_stream(doc)), num_ctx


def generate_request(doc: dict[str, Any]) -> tuple[str, dict[str, Any], EngineLoad | None]:
    """/api/generate body -> (engine path, engine body, load options).

    Not raw: the prompt (and ``system``) become chat messages so the model's own
    template applies, as Ollama does. Raw: the prompt goes to /v1/completions as is.
    """
    prompt = doc.get("prompt", "")
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    system = doc.get("system")
    if system is not None and not isinstance(system, str):
        raise BadRequest("system must be a string")
    images = generate_images(doc)
    check_template_and_context(doc)
    fields, num_ctx = map_options(doc.get("options"))
    fields.update(map_format(doc.get("format")))
    stream = is_stream(doc)
    if flag(doc, "raw", False):
        if system:
            raise BadRequest("raw mode does not support template, system, or context")  # Ollama's words
        if images:
            raise BadRequest("raw mode does not support images in dx; send them without raw")
        body = {"prompt": prompt, **fields}
        return "/v1/completions", _streaming(body, stream), num_ctx
    user: dict[str, Any] = {"role": "user", "content": image_parts(prompt, images) if images else prompt}
    messages = ([{"role": "system", "content": system}] if system else []) + [user]
    return "/v1/chat/completions", _streaming({"messages": messages, **fields}, stream), num_ctx


def check_template_and_context(doc: dict[str, Any]) -> None:
    """/api/generate's ``template`` (a Go template) and ``context`` (tokens of an earlier answer): DX renders
    prompts with the model's own Jinja template and returns no context tokens, so neither can be honoured."""
    template = doc.get("template")
    if template not in (None, ""):
        raise BadRequest("template is not supported by dx: the model's own chat template applies "
                         "(send raw: true with a prompt you formatted)")
    context = doc.get("context")
    if context not in (None, []):
        raise BadRequest("context is not supported by dx (its answers carry none); send the conversation as "
                         "messages to /api/chat")


def _streaming(body: dict[str, Any], stream: bool) -> dict[str, Any]:
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def embed_input(doc: dict[str, Any], key: str) -> list[str] | str:
    value = doc.get(key)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(x, str) for x in value):
        return value
    raise BadRequest(f"{key} must be a string or a non-empty list of strings")


# ------------------------------------------------------------------ answers
def now_iso() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1e6):06d}Z"


def done_fields(
    finish_reason: str | None, timings: dict[str, Any] | None, usage: dict[str, Any] | None,
    started: float, load_duration: float,
) -> dict[str, Any]:
    """The statistics of Ollama's final chunk, from the engine's timings.

    With speculative decoding the engine also counts drafted and accepted tokens
    (``draft_n``, ``draft_n_accepted``); Ollama has no such fields, so they are added
    under the engine's names, only when the engine reports them.
    """
    t = timings or {}
    u = usage or {}
    prompt_n = t.get("prompt_n", u.get("prompt_tokens", 0))
    eval_n = t.get("predicted_n", u.get("completion_tokens", 0))
    draft = {key: int(t[key]) for key in ("draft_n", "draft_n_accepted") if isinstance(t.get(key), (int, float))}
    return {
        "done": True,
        "done_reason": {"length": "length", "tool_calls": "stop"}.get(finish_reason or "stop", "stop"),
        "total_duration": int((time.monotonic() - started) * NS),
        "load_duration": int(load_duration * NS),
        "prompt_eval_count": int(prompt_n or 0),
        "prompt_eval_duration": int(float(t.get("prompt_ms", 0.0)) * 1e6),
        "eval_count": int(eval_n or 0),
        "eval_duration": int(float(t.get("predicted_ms", 0.0)) * 1e6),
        **draft,
    }


def sse_events(chunks: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """Parse an SSE byte stream into its JSON ``data:`` events (``[DONE]`` ends it)."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        while True:
            cut = buf.find(b"\n\n")
            if cut < 0:
                break
            block, buf = buf[:cut], buf[cut + 2 :]
            for line in block.split(b"\n"):
                line = line.rstrip(b"\r")
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    yield event


def tool_calls_to_ollama(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's calls (``arguments`` as JSON text) -> Ollama's (an object, the call's ``index``, its ``id``)."""
    out = []
    for n, call in enumerate(calls):
        fn = call.get("function") or {}
        args = fn.get("arguments") or "{}"
        try:
            parsed = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            parsed = {"_raw": args}
        item: dict[str, Any] = {"function": {"index": n, "name": fn.get("name", ""), "arguments": parsed}}
        if isinstance(call.get("id"), str) and call["id"]:
            item["id"] = call["id"]
        out.append(item)
    return out


def engine_error_message(doc: dict[str, Any], status: int) -> str:
    err = doc.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or err)
    if isinstance(err, str):
        return err
    return f"the engine answered {status}"


# ------------------------------------------------------------------ fields a model may not support
THINK_LEVELS = ("low", "medium", "high")
MAX_TOP_LOGPROBS = 20


def unsupported(model: str, what: str) -> BadRequest:
    """Ollama's words for a capability the model lacks: ``"smollm2" does not support thinking``."""
    return BadRequest(f"{json.dumps(model)} does not support {what}")


def parse_think(value: object) -> bool | str | None:
    """Ollama's ``think``: true/false, or a level ("low", "medium", "high"); None when unset."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value in THINK_LEVELS:
        return value
    raise BadRequest('think must be true, false, "low", "medium" or "high"')


def think_fields(think: bool | str | None, thinks: bool, model: str) -> dict[str, Any]:
    """``think`` -> the engine's reasoning switches; a model that does not reason refuses ``think: true``.

    The engine parses the reasoning out of the answer (``reasoning_format: deepseek``) into
    ``reasoning_content``, which becomes Ollama's ``thinking``.
    """
    if not thinks:
        if think is None or think is False:
            return {}
        raise unsupported(model, "thinking")
    if think is None:
        return {"reasoning_format": "deepseek"}
    fields: dict[str, Any] = {"reasoning_format": "deepseek",
                              "chat_template_kwargs": {"enable_thinking": think is not False}}
    if isinstance(think, str):
        fields["reasoning_effort"] = think
    return fields


def logprob_request(doc: dict[str, Any]) -> tuple[bool, int]:
    """(``logprobs``, ``top_logprobs``) checked as Ollama checks them."""
    want = flag(doc, "logprobs", False)
    top = doc.get("top_logprobs", 0)
    if top is None:
        top = 0
    if isinstance(top, bool) or not isinstance(top, int):
        raise BadRequest("top_logprobs must be an integer")
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise BadRequest("top_logprobs must be between 0 and 20")
    return want, top


def logprob_fields(want: bool, top: int, path: str) -> dict[str, Any]:
    """The engine's fields for log probabilities on ``path`` (OpenAI chat or llama.cpp's own)."""
    if not want:
        return {}
    # The engine lists no probabilities at all for 0 alternatives: ask for one, show none (Ollama's top 0).
    if path == "/v1/chat/completions":
        return {"logprobs": True, "top_logprobs": max(top, 1)}
    return {"n_probs": max(top, 1)}


def logprobs_to_ollama(items: object, top: bool) -> list[dict[str, Any]]:
    """The engine's per-token probabilities -> Ollama's ``logprobs`` list (``api.Logprob``)."""
    out: list[dict[str, Any]] = []
    if not isinstance(items, list):
        return out
    for item in items:
        if not isinstance(item, dict):
            continue
        entry = _token_logprob(item)
        if top:
            alts = item.get("top_logprobs") or item.get("top_probs") or []
            entry["top_logprobs"] = [_token_logprob(a) for a in alts if isinstance(a, dict)]
        out.append(entry)
    return out


def _token_logprob(item: dict[str, Any]) -> dict[str, Any]:
    value = item.get("logprob", item.get("prob", 0.0))
    entry: dict[str, Any] = {"token": str(item.get("token", "")), "logprob": float(value or 0.0)}
    if isinstance(item.get("bytes"), list):
        entry["bytes"] = item["bytes"]
    return entry


def engine_logprobs(event: dict[str, Any]) -> list[Any] | None:
    """Where an engine answer or event carries its per-token probabilities, if it does."""
    if isinstance(event.get("completion_probabilities"), list):  # llama.cpp's own routes (/infill)
        return event["completion_probabilities"]
    for choice in event.get("choices") or []:
        lp = choice.get("logprobs") if isinstance(choice, dict) else None
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):
            return lp["content"]
    return None


def check_shift(doc: dict[str, Any]) -> None:
    """``shift``: DX's engine never shifts the context (it ends the answer with done_reason "length"
    when the context is full), so ``shift: false`` is what it does and ``shift: true`` cannot be honoured."""
    shift = doc.get("shift")
    if shift is None or shift is False:
        return
    if shift is True:
        raise BadRequest("shift is not supported by dx: the engine does not shift the context window; when the "
                         "context is full the answer ends with done_reason \"length\" (send shift: false)")
    raise BadRequest("shift must be true or false")


def check_truncate(doc: dict[str, Any]) -> bool:
    """``truncate`` (default true); a non-boolean is a 400."""
    return flag(doc, "truncate", True)


def message_images(doc: dict[str, Any]) -> bool:
    """Does any message of an /api/chat request carry images?"""
    msgs = doc.get("messages")
    return isinstance(msgs, list) and any(isinstance(m, dict) and m.get("images") for m in msgs)


def generate_images(doc: dict[str, Any]) -> list[str]:
    """/api/generate's ``images`` (base64 strings), checked."""
    images = doc.get("images")
    if not images:
        return []
    if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
        raise BadRequest("images must be a list of base64 strings")
    return images


def image_parts(text: str, images: list[str]) -> list[dict[str, Any]]:
    """A user message's text and images as OpenAI content parts (what the engine's mtmd reads)."""
    return [{"type": "text", "text": text}] + [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{img}"}} for img in images
    ]


def infill_request(doc: dict[str, Any]) -> tuple[dict[str, Any], EngineLoad | None]:
    """/api/generate with ``suffix`` -> the engine's /infill body (prompt before, suffix after the hole)."""
    prompt = doc.get("prompt", "")
    suffix = doc.get("suffix", "")
    if not isinstance(prompt, str) or not isinstance(suffix, str):
        raise BadRequest("prompt and suffix must be strings")
    check_template_and_context(doc)
    fields, num_ctx = map_options(doc.get("options"))
    fmt = map_format(doc.get("format")).get("response_format")
    if fmt is not None:
        fields["json_schema"] = fmt.get("json_schema", {}).get("schema", {}) if fmt["type"] == "json_schema" else {}
    body = {"input_prefix": prompt, "input_suffix": suffix, "prompt": "", **fields}
    body["stream"] = is_stream(doc)
    return body, num_ctx


def infill_choice(event: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One /infill answer or event (llama.cpp's own shape) -> (an OpenAI-like choice, usage)."""
    finish = None
    if event.get("stop"):
        finish = "length" if event.get("stop_type") == "limit" else "stop"
    usage = None
    if "tokens_predicted" in event or "tokens_evaluated" in event:
        usage = {"prompt_tokens": event.get("tokens_evaluated", 0),
                 "completion_tokens": event.get("tokens_predicted", 0)}
    return {"text": event.get("content") or "", "finish_reason": finish}, usage


def embed_dimensions(doc: dict[str, Any]) -> int:
    """/api/embed's ``dimensions`` (0: the model's own)."""
    dims = doc.get("dimensions", 0)
    if dims is None:
        return 0
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 0:
        raise BadRequest("dimensions must be a positive integer")
    return dims


def shorten_vector(vector: object, dims: int) -> object:
    """Ollama's ``dimensions``: the first ``dims`` values, normalized again to unit length."""
    if not isinstance(vector, list) or dims >= len(vector):
        return vector
    head = vector[:dims]
    norm = sum(x * x for x in head) ** 0.5
    return [x / norm for x in head] if norm else head


# ------------------------------------------------------------------ /api/show
def show_parameters(params: dict[str, Any]) -> str:
    """Ollama's ``parameters`` text: one ``name value`` line per value, strings quoted, lists one line each."""
    lines = []
    for key in sorted(params):
        values = params[key] if isinstance(params[key], list) else [params[key]]
        for value in values:
            text = json.dumps(value) if isinstance(value, str) else json.dumps(value).lower() \
                if isinstance(value, bool) else str(value)
            lines.append(f"{key:<30} {text}")
    return "\n".join(lines)


def fim_template(prefix: str, suffix: str, middle: str) -> str:
    """A Go template with Ollama's FIM section (clients such as Continue look for ``.Suffix`` in it)."""
    return (f"{{{{- if .Suffix }}}}{prefix}{{{{ .Prompt }}}}{suffix}{{{{ .Suffix }}}}{middle}"
            "{{- else }}{{ .Prompt }}{{- end }}")


def show_modelfile(name: str, template: str, params: dict[str, Any], system: str | None,
                   adapters: list[str] | tuple[str, ...] = (), messages: Any = ()) -> str:
    """Ollama's ``modelfile`` text for a model: its name (never a server path), template, parameters, system,
    an ``ADAPTER sha256:<hex>`` line for each LoRA adapter it is served with (Ollama writes its blob path)
    and a ``MESSAGE role content`` line for each of its messages."""
    lines = ['# Modelfile generated by "dx show"', "# To build a new Modelfile based on this, replace FROM with:",
             f"# FROM {name}", "", f"FROM {name}"]
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    for line in show_parameters(params).splitlines():
        key, _, value = line.partition(" ")
        lines.append(f"PARAMETER {key} {value.strip()}")
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f"ADAPTER {d}" for d in adapters]
    lines += [f'MESSAGE {m["role"]} """{m["content"]}"""' for m in messages]
    return "\n".join(lines) + "\n"
