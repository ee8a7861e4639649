"""Talk to the engine: send a request, relay its answer to the client byte for byte.

OpenAI routes are passed through untouched: the request body DX received goes
to llama-server as is (plus the engine's secret key), and the response body —
SSE stream included — is copied to the client chunk by chunk as the engine
produces it. The only per-chunk Python work is one read and one write.

When the engine dies mid-request the client gets a clean error instead of a
hang or a torn stream: a 503 if nothing was sent yet, otherwise one final SSE
``data: {"error": ...}`` event (which the openai client raises as an APIError)
followed by a proper end of the chunked body.
"""

from __future__ import annotations

import http.client
import json
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dx.supervisor import Engine

ENGINE_TIMEOUT = 900.0  # a long prefill on a slow CPU still answers well inside this
_HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "content-length", "server", "date",
        "access-control-allow-origin", "access-control-allow-credentials",
    }
)
_READ = 65536


class EngineUnavailable(Exception):
    """The engine went away (crashed, was killed) while serving this request."""


class EngineUnreachable(EngineUnavailable):
    """The engine refused the connection: the request never reached it (safe to retry)."""


class ResponseWriter(Protocol):
    """The bits of the HTTP handler the relay needs."""

    def send_response(self, code: int, message: str | None = None) -> None: ...
    def send_header(self, keyword: str, value: str) -> None: ...
    def end_headers(self) -> None: ...

    @property
    def wfile(self): ...  # type: ignore[no-untyped-def]


def engine_request(
    engine: Engine, method: str, path: str, body: bytes | None, content_type: str | None = "application/json",
    *, with_key: bool = True,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Open a connection to the engine and send one request; return it with the response."""
    conn = http.client.HTTPConnection("127.0.0.1", engine.port, timeout=ENGINE_TIMEOUT)
    headers = {"Connection": "close"}
    if with_key:
        headers["Authorization"] = f"Bearer {engine.api_key}"
    if body is not None:
        headers["Content-Type"] = content_type or "application/json"
    try:
        conn.connect()
    except OSError as exc:
        conn.close()
        raise EngineUnreachable(f"the engine is not answering ({exc.__class__.__name__})") from exc
    try:
        conn.request(method, path, body=body, headers=headers)
        return conn, conn.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()  # it had the request: do not run it twice
        raise EngineUnavailable(f"the engine stopped while working on the request ({exc.__class__.__name__})") \
            from exc


def engine_json(engine: Engine, path: str, payload: dict) -> tuple[int, dict]:
    """POST JSON to the engine and read a JSON answer (non-streaming helpers)."""
    conn, resp = engine_request(engine, "POST", path, json.dumps(payload).encode())
    try:
        raw = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise EngineUnavailable(f"the engine stopped while answering ({exc.__class__.__name__})") from exc
    finally:
        conn.close()
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        doc = {"error": {"message": raw[:200].decode("utf-8", "replace"), "type": "server_error"}}
    return resp.status, doc if isinstance(doc, dict) else {"data": doc}


def iter_chunks(resp: http.client.HTTPResponse):  # type: ignore[no-untyped-def]
    """Yield the engine's body as it arrives; EngineUnavailable if it breaks off."""
    try:
        while True:
            data = resp.read1(_READ)
            if not data:
                return
            yield data
    except (OSError, http.client.HTTPException) as exc:
        raise EngineUnavailable(f"the engine stopped mid-response ({exc.__class__.__name__})") from exc


def relay(writer: ResponseWriter, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
    """Copy the engine's response to the client: status, headers, body bytes."""
    try:
        streaming = resp.getheader("Content-Length") is None
        content_type = resp.getheader("Content-Type", "")
        if not streaming:
            try:
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                raise EngineUnavailable(f"the engine stopped while answering ({exc.__class__.__name__})") from exc
            writer.send_response(resp.status)
            _copy_headers(writer, resp)
            writer.send_header("Content-Length", str(len(body)))
            writer.end_headers()
            writer.wfile.write(body)
            return
        writer.send_response(resp.status)
        _copy_headers(writer, resp)
        writer.send_header("Transfer-Encoding", "chunked")
        writer.send_header("X-Accel-Buffering", "no")
        writer.end_headers()
        out = writer.wfile
        try:
            for data in iter_chunks(resp):
                out.write(b"%x\r\n%b\r\n" % (len(data), data))
        except EngineUnavailable as exc:
            if "text/event-stream" in content_type:
                event = {"error": {"message": f"{exc}; retry the request", "type": "server_error", "code": 503}}
                payload = b"data: " + json.dumps(event).encode() + b"\n\n"
                out.write(b"%x\r\n%b\r\n" % (len(payload), payload))
            out.write(b"0\r\n\r\n")
            raise
        out.write(b"0\r\n\r\n")
    finally:
        conn.close()


def _copy_headers(writer: ResponseWriter, resp: http.client.HTTPResponse) -> None:
    for name, value in resp.getheaders():
        if name.lower() not in _HOP_BY_HOP:
            writer.send_header(name, value)
