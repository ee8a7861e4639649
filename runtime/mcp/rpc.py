"""JSON-RPC 2.0 as MCP uses it: messages, errors, and the stdio framing — for both ends.

MCP (spec 2025-06-18 / 2025-11-25) carries JSON-RPC 2.0 messages: a *request* (``id`` +
``method``), a *notification* (``method``, no ``id``), a *response* (``id`` + ``result`` or
``error``). An ``id`` is a string or an integer, never null; batches were dropped in
2025-06-18. Over stdio each message is one line of UTF-8 JSON ended by ``\\n`` with no
newline inside it (``json.dumps`` escapes every newline of a string, so a compact dump is
one line); over streamable HTTP it is one POST body. This module is pure: the server
(``dx.mcp.server``) and the host's client read and write through the same functions, so
both sides agree on what a malformed message is.

Why not the ``mcp`` SDK: ``import mcp.server`` takes ~0.7 s and loads ~25 MB of
third-party files (pydantic-core, cryptography, starlette, uvicorn, anyio…), more than the
whole cpu runtime (~21 MB); this core is stdlib only. The SDK is the tests' other end.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import IO, Any

JSONRPC = "2.0"

# JSON-RPC 2.0's own codes, and MCP's "resource not found" (spec: server/resources).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND = -32002

# One stdio line may be this long at most; a longer one is refused (and skipped), never buffered whole.
MAX_LINE = 64 << 20

Id = str | int


class RPCError(Exception):
    """A JSON-RPC error: raised by whoever finds it, answered as ``{"code","message"[,"data"]}``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def doc(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


@dataclass(frozen=True)
class Request:
    id: Id
    method: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Notification:
    method: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Response:
    """A result or an error for the request ``id`` (``id`` None: an error about an unreadable request)."""

    id: Id | None
    result: dict[str, Any] | None = None
    error: RPCError | None = None


Message = Request | Notification | Response


# ----------------------------------------------------------------- building messages (plain dicts)
def request(id: Id, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"jsonrpc": JSONRPC, "id": id, "method": method}
    if params is not None:
        doc["params"] = params
    return doc


def notification(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"jsonrpc": JSONRPC, "method": method}
    if params is not None:
        doc["params"] = params
    return doc


def result(id: Id, value: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "id": id, "result": value}


def error(id: Id | None, err: RPCError) -> dict[str, Any]:
    """An error response; ``id`` None when the request's own id could not be read (parse error)."""
    return {"jsonrpc": JSONRPC, "id": id, "error": err.doc()}


def encode(doc: dict[str, Any]) -> bytes:
    """One message as one stdio line: compact UTF-8 JSON and ``\\n`` (no newline can occur inside)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


# ----------------------------------------------------------------- reading messages
def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def parse(raw: bytes | str) -> Message:
    """One message from its JSON text; raises RPCError (-32700 not JSON, -32600 not a JSON-RPC message).

    The error's ``data`` holds the request id when one could be read, so the caller can answer it.
    """
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RPCError(PARSE_ERROR, f"Parse error: not JSON ({exc})") from None
    return from_doc(doc)


def from_doc(doc: Any) -> Message:
    """A parsed JSON value as a message; raises RPCError(-32600) for anything else."""
    if isinstance(doc, list):
        raise RPCError(INVALID_REQUEST, "Invalid Request: JSON-RPC batches are not supported (MCP 2025-06-18 on)")
    if not isinstance(doc, dict):
        raise RPCError(INVALID_REQUEST, "Invalid Request: a message must be a JSON object")
    msg_id = doc.get("id")
    if doc.get("jsonrpc") != JSONRPC:
        raise RPCError(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', _id_data(msg_id))
    if "method" in doc:
        method = doc["method"]
        if not isinstance(method, str) or not method:
            raise RPCError(INVALID_REQUEST, 'Invalid Request: "method" must be a non-empty string', _id_data(msg_id))
        params = doc.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):  # MCP's params are always by name
            raise RPCError(INVALID_REQUEST, 'Invalid Request: "params" must be an object', _id_data(msg_id))
        if "id" not in doc:
            return Notification(method, params)
        if not _valid_id(msg_id):
            raise RPCError(INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer')
        return Request(msg_id, method, params)
    if "id" in doc and ("result" in doc or "error" in doc):
        if "error" in doc:
            err = doc["error"]
            if not isinstance(err, dict) or not isinstance(err.get("code"), int):
                raise RPCError(INVALID_REQUEST, 'Invalid Request: "error" must be an object with an integer "code"')
            return Response(msg_id if _valid_id(msg_id) else None,
                            error=RPCError(err["code"], str(err.get("message", "")), err.get("data")))
        res = doc["result"]
        if not _valid_id(msg_id):
            raise RPCError(INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer')
        if not isinstance(res, dict):
            raise RPCError(INVALID_REQUEST, 'Invalid Request: "result" must be an object', _id_data(msg_id))
        return Response(msg_id, result=res)
    raise RPCError(INVALID_REQUEST, 'Invalid Request: neither a request ("method") nor a response ("result"/"error")',
                   _id_data(msg_id))


def _id_data(value: Any) -> dict[str, Any] | None:
    return {"id": value} if _valid_id(value) else None


def error_for(exc: RPCError) -> dict[str, Any]:
    """The response to a message that failed ``parse``: its id when one was readable, else null."""
    data = exc.data if isinstance(exc.data, dict) else {}
    req_id = data.get("id") if exc.code == INVALID_REQUEST else None
    return error(req_id, RPCError(exc.code, exc.message))


# ----------------------------------------------------------------- stdio framing
def read_line(stream: IO[bytes], limit: int = MAX_LINE) -> bytes | None:
    """The next non-blank line of ``stream`` without its end; None at EOF.

    A line longer than ``limit`` is read to its end and thrown away, and RPCError(-32700) is
    raised: one bad line never ends the conversation nor fills memory.
    """
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return None
        if len(line) > limit and not line.endswith(b"\n"):
            while True:  # skip the rest of the over-long line
                rest = stream.readline(1 << 20)
                if not rest or rest.endswith(b"\n"):
                    break
            raise RPCError(PARSE_ERROR, f"Parse error: a message longer than {limit} bytes")
        line = line.rstrip(b"\r\n")
        if line.strip():
            return line


def read_message(stream: IO[bytes], limit: int = MAX_LINE) -> Message | None:
    """The next message on a stdio stream; None at EOF; RPCError for a line that is no message."""
    line = read_line(stream, limit)
    return None if line is None else parse(line)


class LineWriter:
    """Writes whole messages to a stdio stream, one line each, from any thread (one lock, one flush each)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, doc: dict[str, Any]) -> None:
        data = encode(doc)
        with self._lock:
            self._stream.write(data)
            self._stream.flush()
