"""Ollama's Modelfile: parse it (what Ollama's parser accepts), check its parameters, write it back.

Pure: text in, a ``Modelfile`` out (or a ``ModelfileError`` naming the line and
the instruction, with what to do); ``render`` writes one back (``dx show
--modelfile``). The rules follow Ollama's ``parser/parser.go`` and
``docs/modelfile.mdx``:

* one instruction per line, case-insensitive (``from`` = ``FROM``), then a space
  and its value (the rest of the line, trimmed); ``#`` at a line's start is a comment;
* a value that starts with ``\"\"\"`` runs until a line ends with ``\"\"\"`` (a
  value that starts with ``"`` until one ends with ``"``), newlines kept;
* ``PARAMETER name value`` (name: letters, digits, ``_``), ``stop`` may repeat;
* ``MESSAGE role text`` with role ``system``, ``user`` or ``assistant`` (lower case, as Ollama);
* ``FROM`` is required; ``SYSTEM``/``TEMPLATE`` repeated: the last one counts; ``LICENSE`` accumulates.

Where DX answers differently from Ollama (each one says why in its error):
a second ``FROM`` or ``DRAFT`` (Ollama merges the files of a directory model;
DX serves one GGUF and one draft), ``RENDERER``/``PARSER`` (Ollama's own Go
renderers; DX uses the GGUF's Jinja template and llama-server's parsers).
Parameter names and values are checked here, as Ollama's ``api.FormatParams``
does, against the options DX applies (``dx.models.defaults``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dx.errors import BadRequest
from dxverify.errors import ConfigurationError

#: Instructions DX takes (Ollama's, less RENDERER and PARSER), in the order ``render`` writes them.
INSTRUCTIONS = ("from", "template", "system", "parameter", "adapter", "draft", "license", "message", "requires")
#: Ollama's instructions DX refuses, and why.
REFUSED = {
    "renderer": "DX renders chats with the GGUF's own Jinja template, not Ollama's built-in Go renderers",
    "parser": "DX parses tool calls and thinking with llama-server's parsers, not Ollama's built-in ones",
}
ROLES = ("system", "user", "assistant")

# Parameter -> its type, as Ollama's api.Options declares it; only those DX applies (dx.models.defaults).
INT_PARAMS = frozenset({
    "num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "draft_num_predict",
    "num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "mirostat",
})
FLOAT_PARAMS = frozenset({
    "temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty", "frequency_penalty",
    "mirostat_tau", "mirostat_eta",
})
BOOL_PARAMS = frozenset({"use_mmap", "use_mlock", "numa"})
LIST_PARAMS = frozenset({"stop"})
PARAMS = INT_PARAMS | FLOAT_PARAMS | BOOL_PARAMS | LIST_PARAMS
#: Ollama warns about these and drops them (parser.go deprecatedParameters, less those DX still applies).
DEPRECATED = frozenset({"penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only"})
# The smallest value a parameter takes (the engine's own limits; num_ctx as dx.models.defaults applies it).
_LEAST = {"num_ctx": 256, "num_batch": 1, "num_thread": 0, "num_gpu": -1, "main_gpu": 0, "draft_num_predict": 0,
          "top_k": 0, "num_keep": -1, "repeat_last_n": -1, "mirostat": 0, "num_predict": -2}
_MOST = {"num_ctx": 1 << 20, "mirostat": 2}
MAX_STOPS = 16
VERSION = re.compile(r"v?\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?")
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_GO_INT = re.compile(r"[+-]?[0-9]+")
_GO_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class ModelfileError(ConfigurationError, BadRequest):
    """A Modelfile (or /api/create request) Ollama's rules refuse: one line, naming where and what to do.

    A ConfigurationError for ``dx create`` (exit 2), a 400 for ``/api/create``.
    """

    http_status = 400
    error_type = "invalid_request_error"


@dataclass
class Modelfile:
    """What a Modelfile says, in Ollama's create-request terms."""

    from_: str = ""
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    adapters: list[str] = field(default_factory=list)
    draft: str | None = None
    license: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    requires: str | None = None
    warnings: list[str] = field(default_factory=list)
    adapter_lines: list[int] = field(default_factory=list)  # each ADAPTER's line: its check's errors name it

    def render(self) -> str:
        """Modelfile text that parses back to this (``dx show --modelfile``)."""
        lines = [f"FROM {self.from_}"]
        if self.template is not None:
            lines.append(f"TEMPLATE {quote(self.template)}")
        if self.system is not None:
            lines.append(f"SYSTEM {quote(self.system)}")
        lines += parameter_lines(self.parameters)
        lines += [f"ADAPTER {a}" for a in self.adapters]
        if self.draft:
            lines.append(f"DRAFT {self.draft}")
        lines += [f"LICENSE {quote(text)}" for text in self.license]
        lines += [f"MESSAGE {m['role']} {quote(m['content'])}" for m in self.messages]
        if self.requires:
            lines.append(f"REQUIRES {self.requires}")
        return "\n".join(lines) + "\n"


def parameter_lines(params: Mapping[str, Any]) -> list[str]:
    """``PARAMETER name value`` lines, ``stop`` one line per string, strings quoted when they must be."""
    out = []
    for key, value in params.items():
        for v in value if isinstance(value, list) else [value]:
            text = ("true" if v else "false") if isinstance(v, bool) else quote(v) if isinstance(v, str) \
                else json.dumps(v)
            out.append(f"PARAMETER {key} {text}")
    return out


def quote(text: str) -> str:
    """A value as the parser reads it back: bare when it can be, else ``"…"`` or ``\"\"\"…\"\"\"``."""
    if text and text == text.strip() and "\n" not in text and "\r" not in text and not text.startswith('"'):
        return text
    if '"' not in text and "\n" not in text and "\r" not in text:
        return f'"{text}"'
    return f'"""{text}"""'


def _fail(line: int, what: str, message: str) -> ModelfileError:
    where = f"Modelfile line {line}: {what}: " if what else f"Modelfile line {line}: "
    return ModelfileError(where + message)


def parse(text: str) -> Modelfile:
    """A Modelfile's text -> ``Modelfile``; ModelfileError (line, instruction, what to do) on anything Ollama refuses."""
    text = text.removeprefix("\ufeff")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    mf = Modelfile()
    seen_from = 0
    i = 0
    while i < len(lines):
        number, raw = i + 1, lines[i]
        i += 1
        line = raw.lstrip(" \t")
        if not line or line.startswith("#"):
            continue
        word_match = re.match(r"[A-Za-z]*", line)
        word = word_match.group(0) if word_match else ""
        rest = line[len(word):]
        name = word.lower()
        if not word or (name not in INSTRUCTIONS and name not in REFUSED):
            shown = (word or line.split()[0])[:40]
            raise _fail(number, shown, "unknown instruction; use one of "
                        + ", ".join(n.upper() for n in INSTRUCTIONS) + " (comments start with #)")
        if name in REFUSED:
            raise _fail(number, word.upper(), f"not supported by DX: {REFUSED[name]}; remove the line")
        if not rest or rest[0] not in " \t":
            if rest:
                raise _fail(number, word.upper(), f"unexpected {rest[0]!r} after the instruction; "
                                                  f"write {word.upper()} <value>")
            shape = {"parameter": "<name> <value>", "message": "<role> <text>"}.get(name, "<value>")
            raise _fail(number, word.upper(), f"no value; write {word.upper()} {shape}")
        rest = rest.lstrip(" \t")
        key = ""
        if name in ("parameter", "message"):
            m = re.match(r"[A-Za-z0-9_]+" if name == "parameter" else r"[A-Za-z]+", rest)
            key = m.group(0) if m else ""
            after = rest[len(key):]
            if not key or (after and after[0] not in " \t"):
                if not rest:
                    what = "PARAMETER <name> <value>" if name == "parameter" else "MESSAGE <role> <text>"
                    raise _fail(number, word.upper(), f"nothing after it; write {what}")
                shown = rest.split()[0][:40]
                kind = "parameter name (letters, digits and _)" if name == "parameter" else "message role"
                raise _fail(number, f"{word.upper()} {shown}", f"not a {kind}; write "
                            + ("PARAMETER <name> <value>" if name == "parameter" else "MESSAGE user|assistant|system <text>"))
            if not after:
                raise _fail(number, f"{word.upper()} {key}", f"no value; write {word.upper()} {key} <value>")
            rest = after.lstrip(" \t")
            if name == "message" and key not in ROLES:
                raise _fail(number, f"MESSAGE {key}", 'message role must be one of "system", "user", or '
                                                      '"assistant" (lower case)')
        value, i = _value(rest, lines, i, number, word.upper())
        label = f"{word.upper()} {key}".strip()
        if name == "from":
            seen_from += 1
            if seen_from > 1:
                raise _fail(number, "FROM", "a second FROM; DX builds a model from one GGUF: keep one FROM line")
            if not value:
                raise _fail(number, "FROM", "no model named; write FROM <model name, GGUF path or sha256:digest>")
            mf.from_ = value
        elif name == "parameter":
            _parameter(mf, key, value, number)
        elif name == "message":
            mf.messages.append({"role": key, "content": value})
        elif name == "template":
            mf.template = value
        elif name == "system":
            mf.system = value
        elif name == "license":
            mf.license.append(value)
        elif name == "adapter":
            if not value:
                raise _fail(number, label, "no adapter named; write ADAPTER <LoRA GGUF path or sha256:digest>")
            mf.adapters.append(value)
            mf.adapter_lines.append(number)
        elif name == "draft":
            if mf.draft is not None:
                raise _fail(number, label, "a second DRAFT; DX speculates with one draft model: keep one")
            if not value:
                raise _fail(number, label, "no draft named; write DRAFT <model name, GGUF path or sha256:digest>")
            mf.draft = value
        elif name == "requires":
            if not VERSION.fullmatch(value):
                raise _fail(number, label, f"{value[:40]!r} is not a version; write REQUIRES 0.14.0")
            mf.requires = value.removeprefix("v")
    if not seen_from:
        raise ModelfileError("Modelfile: no FROM line; add FROM <model name, GGUF path or sha256:digest>")
    return mf


def _value(rest: str, lines: list[str], i: int, number: int, what: str) -> tuple[str, int]:
    """The value that starts with ``rest`` (line ``number``), and the index of the next line to read."""
    buf = rest
    opener = '"""' if buf.startswith('"""') else '"' if buf.startswith('"') else ""
    while True:
        s = buf.strip(" \t\n")
        if not opener:
            return s, i
        closed = len(s) >= 2 * len(opener) and s.endswith(opener)
        if closed:
            return s[len(opener):-len(opener)], i
        if i >= len(lines):
            raise _fail(number, what, f"the {opener} string is never closed; end it with {opener}")
        buf += "\n" + lines[i]
        i += 1


def _parameter(mf: Modelfile, key: str, value: str, line: int) -> None:
    if key in DEPRECATED:
        mf.warnings.append(f"Modelfile line {line}: parameter {key} is deprecated and ignored")
        return
    try:
        typed = parse_parameter(key, value)
    except ModelfileError as e:
        raise _fail(line, f"PARAMETER {key}", str(e)) from None
    if key in LIST_PARAMS:
        mf.parameters.setdefault(key, []).append(typed)
        if len(mf.parameters[key]) > MAX_STOPS:
            raise _fail(line, f"PARAMETER {key}", f"more than {MAX_STOPS} stop strings; keep at most {MAX_STOPS}")
    else:
        mf.parameters[key] = typed


def _unknown(key: str) -> ModelfileError:
    import difflib

    near = difflib.get_close_matches(key.lower(), sorted(PARAMS), n=1)
    hint = f"did you mean {near[0]}? " if near else ""
    return ModelfileError(f"unknown parameter {key[:40]!r}; {hint}DX takes {', '.join(sorted(PARAMS))}")


def parse_parameter(key: str, text: str) -> Any:
    """One PARAMETER's text -> its typed value (Go's ParseInt/ParseFloat/ParseBool rules)."""
    if key not in PARAMS:
        raise _unknown(key)
    if key in LIST_PARAMS:
        if not text:
            raise ModelfileError("an empty stop string; give the text that ends a reply")
        return text
    if key in INT_PARAMS:
        if not _GO_INT.fullmatch(text):
            raise ModelfileError(f"invalid int value {text[:40]!r}; give a whole number")
        return _ranged(key, int(text))
    if key in FLOAT_PARAMS:
        if not _GO_FLOAT.fullmatch(text):
            raise ModelfileError(f"invalid float value {text[:40]!r}; give a number such as 0.7")
        return float(text)
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ModelfileError(f"invalid bool value {text[:40]!r}; give true or false")


def _ranged(key: str, v: int) -> int:
    least, most = _LEAST.get(key), _MOST.get(key, 1 << 31)
    if (least is not None and v < least) or v > most:
        raise ModelfileError(f"{v} is out of range; give a value from {least if least is not None else ''} "
                             f"to {most}")
    return v


def check_parameters(params: object) -> dict[str, Any]:
    """``/api/create``'s ``parameters`` object (JSON values) -> the same typed dict the parser makes."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ModelfileError("parameters must be a JSON object of Modelfile parameters")
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key in DEPRECATED or value is None:
            continue
        where = f"parameter {key[:40]!r}"
        if key not in PARAMS:
            raise _unknown(key)
        if key in LIST_PARAMS:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not items or not all(isinstance(s, str) and s for s in items):
                raise ModelfileError(f"{where} must be a string or a list of non-empty strings")
            if len(items) > MAX_STOPS:
                raise ModelfileError(f"{where} has more than {MAX_STOPS} stop strings; keep at most {MAX_STOPS}")
            out[key] = list(items)
        elif key in INT_PARAMS:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ModelfileError(f"{where} must be an integer, not {json.dumps(value)[:40]}")
            try:
                out[key] = _ranged(key, value)
            except ModelfileError as e:
                raise ModelfileError(f"{where}: {e}") from None
        elif key in FLOAT_PARAMS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ModelfileError(f"{where} must be a number, not {json.dumps(value)[:40]}")
            out[key] = float(value)
        else:
            if not isinstance(value, bool):
                raise ModelfileError(f"{where} must be true or false, not {json.dumps(value)[:40]}")
            out[key] = value
    return out
