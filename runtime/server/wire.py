"""HTTP/1.1 on the wire: a request head parsed strictly, and answers in each API's error shape.

Pure functions over bytes (no sockets, no threads), so the strictness that stops
request smuggling is tested on its own: a bad or repeated Content-Length, or
Content-Length with Transfer-Encoding, is a 400, a chunked body alone a 411.
Errors go out in each API's own shape: Ollama ``{"error": "..."}``, OpenAI
``{"error": {"message", "type", "code"}}``, chosen by the API the target names.
"""


from __future__ import annotations

import http
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dx import __version__


class HTTPError(Exception):
    """A handler's answer that is an error: status + one-line message (+ OpenAI error type)."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


# (method, path) -> (handler, public): the route table's lookup (dx.server.routes.resolve).
Resolve = Callable[[str, str], tuple[Callable[[Any], None], bool]]


class Headers:
    """Request header fields, case-insensitive (the part of email.message.Message handlers use)."""

    __slots__ = ("_by_name", "_items")

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        self._by_name: dict[str, list[str]] = {}
        for name, value in items:
            self._by_name.setdefault(name.lower(), []).append(value)

    def get(self, name: str, default: Any = None) -> Any:
        values = self._by_name.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str, default: Any = None) -> Any:
        return list(self._by_name.get(name.lower(), ())) or default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._by_name

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)


class WireError(Exception):
    """A request that cannot be taken as HTTP at all: answered and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
HEAD_END = re.compile(rb"\r?\n\r?\n")
_DIGITS = re.compile(r"[0-9]{1,18}")


@dataclass
class Head:
    method: str
    target: str
    version: str
    headers: Headers
    body_length: int
    keep_alive: bool


def parse_head(block: bytes) -> Head:
    """Request line + header fields (``block`` without the blank line that ends it), strictly.

    Framing is decided here, for every request, whether or not a handler reads
    the body: a request whose length is ambiguous is refused, never guessed.
    """
    lines = block.split(b"\n")
    parts = lines[0].rstrip(b"\r").split(b" ")
    if len(parts) != 3 or not TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise WireError(400, "malformed request line")
    method, target, version = (p.decode("latin-1") for p in parts)
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if re.fullmatch(r"HTTP/\d(\.\d)?", version):  # 400, not 505: the client chose the version
            raise WireError(400, f"{version} is not supported here; use HTTP/1.1")
        raise WireError(400, "malformed request line")
    if not (target.startswith("/") or target == "*") or any(c <= " " or c == "\x7f" for c in target):
        raise WireError(400, "malformed request target")
    items: list[tuple[str, str]] = []
    for raw in lines[1:]:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        name, colon, value = line.partition(b":")
        if not colon or not TOKEN.fullmatch(name):  # also obs-fold and space before the colon (RFC 9112 5.1)
            raise WireError(400, "malformed header line")
        value = value.strip(b" \t")
        if b"\r" in value or b"\0" in value:
            raise WireError(400, "malformed header value")
        items.append((name.decode("latin-1"), value.decode("latin-1")))
    headers = Headers(items)
    hosts = headers.get_all("Host", [])
    if len(hosts) > 1 or (version == "HTTP/1.1" and not hosts):
        raise WireError(400, "an HTTP/1.1 request needs exactly one Host header")
    lengths = headers.get_all("Content-Length", [])
    codings = headers.get_all("Transfer-Encoding", [])
    if lengths and codings:
        raise WireError(400, "Content-Length together with Transfer-Encoding is ambiguous; send only Content-Length")
    if codings:
        if ",".join(codings).strip().lower() == "chunked":
            raise WireError(411, "chunked request bodies are not accepted; send Content-Length")
        raise WireError(400, f"Transfer-Encoding {', '.join(codings)!r} is not supported; send Content-Length")
    if len(lengths) > 1:
        raise WireError(400, "more than one Content-Length header")
    body_length = 0
    if lengths:
        if not _DIGITS.fullmatch(lengths[0]):
            raise WireError(400, f"Content-Length {lengths[0][:40]!r} is not a non-negative number")
        body_length = int(lengths[0])
    tokens = {t.strip().lower() for t in ",".join(headers.get_all("Connection", [])).split(",")}
    keep = "close" not in tokens and (version == "HTTP/1.1" or "keep-alive" in tokens)
    return Head(method, target, version, headers, body_length, keep)


def api_of(target: str) -> str:
    """The API a request speaks, hence its error shape: Ollama's for ``/api/*``, OpenAI's otherwise.

    Not a guess: the namespace is the API. Every ``/api/`` route in the route table is an
    Ollama handler (``dx.server.ollama``) and every other path is OpenAI's (``/v1/*``) or
    llama-server's own (passthrough), whose errors are OpenAI-shaped; a request refused before
    any route is found (a bad head, 503 at the door) has nothing but its target to go by.
    """
    if target.startswith("/v1/messages"):
        return "anthropic"  # the Messages API (llama-server's /v1/messages): Anthropic's error shape
    return "ollama" if target.startswith("/api/") else "openai"


def target_of(buf: bytes | bytearray) -> str:
    """The request target of a possibly incomplete head (for the error shape), else ""."""
    first = bytes(buf[:2048]).split(b"\n", 1)[0].split(b" ")
    return first[1].decode("latin-1") if len(first) > 1 else ""


def error_doc(api: str, status: int, message: str, kind: str) -> dict[str, Any]:
    if api == "ollama":
        return {"error": message}
    if api == "anthropic":
        return {"type": "error", "error": {"type": _anthropic_type(status, kind), "message": message}}
    return {"error": {"message": message, "type": kind, "code": status}}


def _anthropic_type(status: int, kind: str) -> str:
    """Anthropic's error types (docs.anthropic.com/en/api/errors) for DX's kinds."""
    if status == 413:
        return "request_too_large"
    if status == 429:
        return "rate_limit_error"
    if status == 503:
        return "overloaded_error"
    if kind in ("invalid_request_error", "authentication_error", "permission_error", "not_found_error"):
        return kind
    return "api_error" if status >= 500 else "invalid_request_error"


_PHRASES = {s.value: s.phrase for s in http.HTTPStatus}
_SERVER = f"dx/{__version__}"
_date_cache: list[Any] = [0, ""]


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(when: float) -> str:
    """RFC 9110's IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``), as email.utils.formatdate(usegmt=True)
    writes it, without loading the email package at start (names fixed in English, whatever the locale)."""
    t = time.gmtime(when)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def _date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, http_date(now)]
    return _date_cache[1]


def status_line(version: str, status: int) -> str:
    return f"{version} {status} {_PHRASES.get(status, '')}\r\nServer: {_SERVER}\r\nDate: {_date()}\r\n"


def error_bytes(target: str, status: int, message: str, kind: str = "invalid_request_error") -> bytes:
    """A complete error answer that closes the connection (for errors before a request exists)."""
    body = json.dumps(error_doc(api_of(target), status, message, kind), separators=(",", ":")).encode()
    extra = "Retry-After: 1\r\n" if status in (429, 503) else ""
    head = (
        f"{status_line('HTTP/1.1', status)}Content-Type: application/json; charset=utf-8\r\n{extra}"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body
