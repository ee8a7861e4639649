"""The dx HTTP server: Ollama and OpenAI APIs in front of supervised engines.

A stdlib threaded HTTP server (fast to import; this runs in every minted
executable). What it adds in front of llama-server is policy:

* auth: ``Authorization: Bearer <key>`` on every API route (``dx.auth``);
* bounds: header bytes, body bytes, a deadline for reading a request (a
  slow-loris client is cut off, not waited for), a cap on open connections
  answered with 503 + Retry-After instead of a hang;
* errors in each API's own shape: Ollama ``{"error": "..."}``, OpenAI
  ``{"error": {"message", "type", "code"}}``;
* routing: OpenAI routes are relayed byte for byte (``dx.openai_proxy``), Ollama
  routes are translated (``dx.ollama_api``), anything else (llama.cpp's web UI,
  /props, /tokenize...) goes to the default model's engine.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dx import __version__
from dx.ollama_api import BadRequest
from dx.supervisor import EngineManager, ModelSource
from dxverify.errors import ConfigurationError, DXError

MiB = 1 << 20


@dataclass(frozen=True)
class ServerLimits:
    """Everything that bounds what one client can make the server do."""

    max_body: int = 32 * MiB
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0  # idle keep-alive + request line + headers
    body_timeout: float = 60.0
    io_timeout: float = 300.0  # one blocking send/recv on the client socket
    max_connections: int = 128


class ModelNotFound(LookupError):
    """No model by that name (404 in either API)."""


class ModelResolver:
    """API model name -> ModelSource: the served default model first, then the store.

    Only names are accepted from the network: a path or an ``hf:`` spec in a
    request is refused, so a client cannot make the server open arbitrary files
    or start downloads through a chat request.
    """

    def __init__(self, default: ModelSource | None, store: Any = None) -> None:
        self.default = default
        self._store = store
        self._store_lock = threading.Lock()

    @property
    def store(self) -> Any:
        with self._store_lock:
            if self._store is None:
                from dx.store import Store

                self._store = Store()
            return self._store

    def default_names(self) -> set[str]:
        if self.default is None:
            return set()
        name = self.default.display_name
        stem = name[:-5] if name.lower().endswith(".gguf") else name
        return {name, f"{name}:latest", stem, f"{stem}:latest", stem.lower(), f"{stem.lower()}:latest"}

    def __call__(self, name: str) -> ModelSource:
        if not name:
            if self.default is None:
                raise ModelNotFound("model is required (this server has no default model)")
            return self.default
        if name in self.default_names():
            return self.default  # type: ignore[return-value]
        from dx.model_names import is_hf, looks_like_path, parse_name
        from dx.store import ModelNotFoundError

        if is_hf(name) or looks_like_path(name):
            raise ModelNotFound(f"model {name!r} not found: the API takes model names; `dx pull` fetches files")
        try:
            parse_name(name)
            entry = self.store.get(name)
        except (ModelNotFoundError, ConfigurationError):
            raise ModelNotFound(f"model {name!r} not found, try pulling it first") from None
        return ModelSource(path=entry.path, name=entry.name, sha256=entry.sha256)


class _Deadlines:
    """Cuts off connections that take too long to send a request (slow loris).

    One thread for all connections; it sleeps while nothing is pending, so an idle
    server costs no CPU.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[socket.socket, float] = {}
        self._thread = threading.Thread(target=self._loop, name="dx-deadlines", daemon=True)
        self._thread.start()

    def set(self, sock: socket.socket, seconds: float) -> None:
        with self._cond:
            was_idle = not self._due
            self._due[sock] = time.monotonic() + seconds
            if was_idle:
                self._cond.notify()

    def clear(self, sock: socket.socket) -> None:
        with self._cond:
            self._due.pop(sock, None)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._due:
                    self._cond.wait()
                now = time.monotonic()
                late = [s for s, due in self._due.items() if due <= now]
                for s in late:
                    del self._due[s]
                if not late:
                    self._cond.wait(min(0.25, min(self._due.values()) - now))
            for s in late:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


class _HeaderBudget:
    """Wraps the request stream while headers are read: at most ``budget`` bytes."""

    def __init__(self, raw: Any, budget: int) -> None:
        self._raw = raw
        self.left = budget
        self.exceeded = False

    def readline(self, limit: int = -1) -> bytes:
        if self.exceeded:
            return b"\r\n"
        want = self.left + 1 if limit < 0 else min(limit, self.left + 1)
        line = self._raw.readline(want)
        self.left -= len(line)
        if self.left < 0:
            self.exceeded = True
            return b"\r\n"  # end the header block here; parse_request then answers 431
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class DXHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        self.deadlines = _Deadlines()
        self._active = 0
        self._active_lock = threading.Lock()
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._active_lock:
            full = self._active >= self.app.limits.max_connections
            if not full:
                self._active += 1
        if full:
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._active_lock:
            self._active -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return  # a client that went away is not a server error
        print(f"dx: internal error serving {client_address}: {type(exc).__name__}: {exc}", file=sys.stderr)


def _refuse_busy(sock: socket.socket) -> None:
    body = b'{"error":"server busy: too many open connections, retry shortly"}'
    with contextlib.suppress(OSError):
        sock.settimeout(1.0)
        sock.sendall(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )


class App:
    """What the handlers share: config, the engine manager, the model resolver."""

    def __init__(
        self, manager: EngineManager, resolver: ModelResolver, api_key: str | None,
        limits: ServerLimits | None = None, access_log: bool = False,
    ) -> None:
        self.manager = manager
        self.resolver = resolver
        self.api_key = api_key
        self.limits = limits or ServerLimits()
        self.access_log = access_log
        self.started = time.time()


class HTTPError(Exception):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


_OLLAMA_POST = {
    "/api/generate": "ollama_generate",
    "/api/chat": "ollama_chat",
    "/api/show": "ollama_show",
    "/api/embed": "ollama_embed",
    "/api/embeddings": "ollama_embeddings",
    "/api/pull": "ollama_pull",
    "/api/delete": "ollama_delete",
    "/api/copy": "ollama_copy",
}
_OLLAMA_GET = {"/api/tags": "ollama_tags", "/api/ps": "ollama_ps", "/api/version": "ollama_version"}
_OPENAI_RELAY = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
# Request headers passed on to the engine's own routes: content negotiation and caching of the web
# UI's assets (llama-server keeps them gzip-compressed and answers 415 to a client that cannot take that).
_FORWARDED = ("Accept", "Accept-Encoding", "Accept-Language", "If-None-Match", "If-Modified-Since", "Range")


class Handler(BaseHTTPRequestHandler):
    server: DXHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = f"dx/{__version__}"

    def version_string(self) -> str:
        return self.server_version

    # ------------------------------------------------------------ plumbing
    def setup(self) -> None:
        super().setup()
        self.app: App = self.server.app
        self.connection.settimeout(self.app.limits.io_timeout)
        self._raw_rfile = self.rfile

    def handle_one_request(self) -> None:
        self._headers_sent = False
        self._budget = _HeaderBudget(self._raw_rfile, self.app.limits.max_header_bytes)
        self.rfile = self._budget  # type: ignore[assignment]
        self.server.deadlines.set(self.connection, self.app.limits.header_timeout)
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True
        finally:
            self.server.deadlines.clear(self.connection)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.rfile = self._raw_rfile
        if ok and self._budget.exceeded:
            self.close_connection = True
            self.send_error(431, "Request Header Fields Too Large")
            return False
        self.server.deadlines.clear(self.connection)  # headers are in; the body has its own deadline
        return ok

    def end_headers(self) -> None:
        self._headers_sent = True
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        if self.app.access_log:
            super().log_message(format, *args)

    def _api(self) -> str:
        return "ollama" if self.path.startswith("/api/") else "openai"

    def send_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(doc, separators=(",", ":"), default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error_json(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        if self._headers_sent:
            return
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        if status == 401:
            headers = {"WWW-Authenticate": 'Bearer realm="dx"'}
        if self._api() == "ollama":
            self.send_json(status, {"error": message}, headers)
        else:
            self.send_json(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.close_connection = True
            raise HTTPError(411, "chunked request bodies are not accepted; send Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
        except ValueError:
            self.close_connection = True
            raise HTTPError(400, "Content-Length is not a number") from None
        if length < 0:
            self.close_connection = True
            raise HTTPError(400, "Content-Length is negative")
        if length > self.app.limits.max_body:
            self.close_connection = True  # the body stays unread; do not reuse the connection
            raise HTTPError(413, f"request body of {length} bytes is over the limit of {self.app.limits.max_body}")
        self.server.deadlines.set(self.connection, self.app.limits.body_timeout)
        data = self.rfile.read(length)
        self.server.deadlines.clear(self.connection)
        if len(data) != length:
            self.close_connection = True
            raise HTTPError(400, "request body ended early")
        return data

    def read_json(self) -> dict[str, Any]:
        body = self.read_body()
        if not body:
            raise HTTPError(400, "the request needs a JSON body")
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise HTTPError(400, f"invalid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        return doc

    def authorized(self) -> bool:
        from dx.auth import bearer_matches

        key = self.app.api_key
        return key is None or bearer_matches(self.headers.get("Authorization"), key)

    # ------------------------------------------------------------ dispatch
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/health" and method in ("GET", "HEAD"):
                self.send_json(200, {"status": "ok"})
                return
            if path == "/" and method in ("GET", "HEAD") and "text/html" not in self.headers.get("Accept", ""):
                self._send_text(200, "dx is running\n")
                return
            if not self.authorized():
                if method in ("GET", "HEAD") and not path.startswith(("/api/", "/v1/")):
                    self._passthrough(method, path, with_key=False)  # the web UI's public assets
                    return
                raise HTTPError(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                                kind="authentication_error")
            handler = None
            if method == "POST" or (method == "DELETE" and path == "/api/delete"):
                handler = _OLLAMA_POST.get(path)
            elif method in ("GET", "HEAD"):
                handler = _OLLAMA_GET.get(path)
            if handler is not None:
                getattr(self, handler)()
                return
            if path in _OPENAI_RELAY and method == "POST":
                self.openai_relay(path)
                return
            if path == "/v1/models" and method in ("GET", "HEAD"):
                self.openai_models()
                return
            if path.startswith("/api/"):
                raise HTTPError(404 if method in ("GET", "POST", "DELETE") else 405, f"no route {method} {path}")
            self._passthrough(method, path, with_key=True)
        except HTTPError as exc:
            self.send_error_json(exc.status, exc.message, exc.kind)
        except BadRequest as exc:
            self.send_error_json(400, str(exc))
        except ModelNotFound as exc:
            self.send_error_json(404, str(exc), "not_found_error")
        except _EngineError as exc:
            self.send_error_json(exc.status, exc.message, "server_error")
        except DXError as exc:
            status = 404 if type(exc).__name__ == "ModelNotFoundError" else 500
            if type(exc).__name__ == "ReadOnlyModelError":
                status = 403
            self.send_error_json(status, str(exc), "server_error")
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # a bug in dx: still an answer in the API's shape
            self.close_connection = True
            print(f"dx: internal error on {method} {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            self.send_error_json(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

    def _send_text(self, status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # ------------------------------------------------------------ engines
    @contextlib.contextmanager
    def engine_for(  # type: ignore[no-untyped-def]
        self, model: str, keep_alive: object = None, num_ctx: int | None = None, purpose: str = "generate"
    ):
        """Lease the engine for ``model``; yields (engine, seconds spent loading it)."""
        from dx.supervisor import parse_keep_alive

        if keep_alive is not None:
            try:
                parse_keep_alive(keep_alive)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
        t0 = time.monotonic()
        try:
            lease = self.app.manager.lease(model, keep_alive, num_ctx=num_ctx, purpose=purpose)
            engine = lease.__enter__()
        except ModelNotFound:
            raise
        except DXError as exc:
            if type(exc).__name__ == "ModelNotFoundError":
                raise ModelNotFound(str(exc)) from None
            raise _EngineError(500, f"cannot load model: {exc}") from None
        try:
            yield engine, time.monotonic() - t0
        except BaseException:
            if not lease.__exit__(*sys.exc_info()):
                raise
        else:
            lease.__exit__(None, None, None)

    def _open(  # type: ignore[no-untyped-def]
        self, model: str, keep_alive: object, num_ctx: int | None, method: str, path: str, body: bytes | None,
        purpose: str = "generate",
    ):
        """Lease + send. A refused connection (the engine died between requests) is retried once on a
        fresh engine; a request the engine already had when it died is answered 503, never run twice."""
        from dx.openai_proxy import EngineUnavailable, EngineUnreachable, engine_request

        for attempt in (1, 2):
            cm = self.engine_for(model, keep_alive, num_ctx, purpose)
            engine, load = cm.__enter__()
            try:
                conn, resp = engine_request(engine, method, path, body)
                return cm, engine, load, conn, resp
            except EngineUnreachable as exc:
                cm.__exit__(None, None, None)
                if attempt == 2 or engine.alive():
                    raise _EngineError(503, f"{exc}; retry the request") from None
            except EngineUnavailable as exc:
                cm.__exit__(None, None, None)
                raise _EngineError(503, f"{exc}; retry the request") from None
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ OpenAI
    def openai_relay(self, path: str) -> None:
        from dx.openai_proxy import EngineUnavailable, relay

        body = self.read_body()
        try:
            doc = json.loads(body) if body else None
        except ValueError as exc:
            raise HTTPError(400, f"invalid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        model = doc.get("model", "")
        if not isinstance(model, str):
            raise HTTPError(400, "model must be a string")
        purpose = "embed" if path == "/v1/embeddings" else "generate"
        cm, _engine, _load, conn, resp = self._open(model, None, None, "POST", path, body, purpose)
        try:
            relay(self, conn, resp)
        except EngineUnavailable as exc:
            self.close_connection = True
            if not self._headers_sent:
                raise _EngineError(503, f"{exc}; retry the request") from None
        finally:
            cm.__exit__(None, None, None)

    def openai_models(self) -> None:
        """Every model DX can serve; a loaded one carries its engine's own /v1/models entry (``meta``).

        The engine alone knows only the one model it serves, so the list is DX's;
        what llama-server says of a running model (vocabulary, context it was
        trained for, parameters, size) is passed through from it.
        """
        created = int(self.app.started)
        data = [{"id": n, "object": "model", "created": created, "owned_by": "dx"} for n in self._model_names()]
        by_id = {d["id"]: d for d in data}
        for lm in self.app.manager.loaded():
            if lm.purpose != "generate" or lm.engine is None:
                continue
            entry = by_id.get(lm.name)
            if entry is None:
                entry = by_id[lm.name] = {"id": lm.name, "object": "model", "created": created, "owned_by": "dx"}
                data.append(entry)
            meta = self._engine_model_meta(lm.engine)
            if meta is not None:
                entry["meta"] = meta
        self.send_json(200, {"object": "list", "data": data})

    @staticmethod
    def _engine_model_meta(engine: Any) -> dict[str, Any] | None:
        from dx.openai_proxy import EngineUnavailable, engine_json

        try:
            status, doc = engine_json(engine, "/v1/models", timeout=5.0)
        except EngineUnavailable:
            return None
        items = doc.get("data") if status == 200 else None
        if isinstance(items, list) and items and isinstance(items[0], dict) and isinstance(items[0].get("meta"), dict):
            return items[0]["meta"]
        return None

    def _model_names(self) -> list[str]:
        names: list[str] = []
        if self.app.resolver.default is not None:
            names.append(self.app.resolver.default.display_name)
        with contextlib.suppress(DXError, OSError):
            names.extend(e.name for e in self.app.resolver.store.list() if e.name not in names)
        return names

    def _passthrough(self, method: str, path: str, *, with_key: bool) -> None:
        """llama.cpp's own routes and web UI, on the default model's engine."""
        from dx.openai_proxy import EngineUnavailable, engine_request, relay

        if self.app.resolver.default is None:
            raise HTTPError(404, f"no route {method} {path}", kind="not_found_error")
        body = self.read_body() if method in ("POST", "PUT") else None
        with self.engine_for("") as (engine, _load):
            target = self.path if self.path.startswith("/") else "/"
            try:
                forward = {h: v for h in _FORWARDED if (v := self.headers.get(h)) is not None}
                conn, resp = engine_request(
                    engine, method, target, body, self.headers.get("Content-Type"), with_key=with_key,
                    forward=forward,
                )
            except EngineUnavailable as exc:
                raise _EngineError(503, f"{exc}; retry the request") from None
            if path == "/" and resp.status == 404:  # an engine built without llama.cpp's web UI
                conn.close()
                self._front_page()
                return
            try:
                relay(self, conn, resp)
            except EngineUnavailable as exc:
                self.close_connection = True
                if not self._headers_sent:
                    raise _EngineError(503, f"{exc}; retry the request") from None

    def _front_page(self) -> None:
        """What a browser opening the URL sees when the engine has no web UI: where the APIs are."""
        import html

        default = self.app.resolver.default
        model = html.escape(default.display_name) if default is not None else "models from the store"
        self._send_text(200, (
            "<!doctype html><meta charset=utf-8><title>dx</title>"
            f"<h1>dx {html.escape(__version__)} is serving {model}</h1>"
            "<p>OpenAI API at <code>/v1</code> (chat/completions, completions, embeddings, models), "
            "Ollama API at <code>/api</code>. Send the API key (<code>~/.dx/api_key</code>) as "
            "<code>Authorization: Bearer &lt;key&gt;</code>.</p>"
            "<p>This build has no web UI; point Open WebUI or any OpenAI/Ollama client here.</p>\n"
        ), "text/html; charset=utf-8")

    # ------------------------------------------------------------ Ollama
    def ollama_version(self) -> None:
        self.send_json(200, {"version": __version__})

    def ollama_tags(self) -> None:
        from dx.ollama_api import iso

        models = []
        default = self.app.resolver.default
        if default is not None:
            models.append(self._tag_entry(default.display_name, default.size(), default.sha256 or "",
                                          _mtime(default), {}))
        with contextlib.suppress(DXError, OSError):
            for e in self.app.resolver.store.list():
                if default is not None and e.name == default.display_name:
                    continue
                facts = e.facts
                models.append(self._tag_entry(e.name, e.size, e.sha256, e.modified, {
                    "family": facts.family, "parameter_size": facts.parameter_size,
                    "quantization_level": facts.quant,
                }))
        for m in models:
            m["modified_at"] = iso(m["modified_at"])
        self.send_json(200, {"models": models})

    @staticmethod
    def _tag_entry(name: str, size: int, sha: str, modified: float, details: dict[str, str]) -> dict[str, Any]:
        family = details.get("family", "")
        return {
            "name": name, "model": name, "modified_at": modified, "size": size, "digest": sha,
            "details": {
                "parent_model": "", "format": "gguf", "family": family, "families": [family] if family else None,
                "parameter_size": details.get("parameter_size", ""),
                "quantization_level": details.get("quantization_level", ""),
            },
        }

    def ollama_ps(self) -> None:
        from dx.ollama_api import iso

        models: list[dict[str, Any]] = []
        for lm in sorted(self.app.manager.loaded(), key=lambda m: m.purpose != "generate"):
            if any(m["name"] == lm.name for m in models):
                continue  # its generation and embedding engines are one model to Ollama clients
            size = lm.source.size()
            models.append({
                "name": lm.name, "model": lm.name, "size": size, "digest": lm.source.sha256 or "",
                "details": {"format": "gguf", "parent_model": "", "family": "", "families": None,
                            "parameter_size": "", "quantization_level": ""},
                "expires_at": iso(lm.expires_at) if lm.expires_at is not None else "2318-01-01T00:00:00Z",
                "size_vram": 0, "context_length": lm.ctx,
            })
        self.send_json(200, {"models": models})

    def ollama_show(self) -> None:
        from dx.model_check import read_facts
        from dx.ollama_api import model_name

        doc = self.read_json()
        name = model_name(doc)
        source = self.app.resolver(name)
        facts = read_facts(source.path, source.offset, source.length)
        meta = {k: v for k, v in facts.metadata.items() if not isinstance(v, (bytes, bytearray))}
        template = meta.get("tokenizer.chat_template", "")
        capabilities = ["completion", "embedding"]
        if isinstance(template, str) and "tools" in template:
            capabilities.append("tools")
        self.send_json(200, {
            "license": str(meta.get("general.license", "")),
            "modelfile": f"# dx: {source.display_name}\nFROM {source.path}\n",
            "parameters": "",
            "template": template if isinstance(template, str) else "",
            "details": {
                "parent_model": "", "format": "gguf", "family": facts.family,
                "families": [facts.family] if facts.family else None,
                "parameter_size": facts.parameter_size, "quantization_level": facts.quant,
            },
            "model_info": {k: v for k, v in meta.items() if k != "tokenizer.chat_template"},
            "capabilities": capabilities,
            "modified_at": _iso_mtime(source),
        })

    def _ollama_load_only(self, doc: dict[str, Any], name: str) -> bool:
        """Ollama loads (or, with keep_alive 0, unloads) a model on an empty request."""
        from dx.ollama_api import now_iso
        from dx.supervisor import parse_keep_alive

        keep_alive = doc.get("keep_alive")
        try:
            keep = parse_keep_alive(keep_alive)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        key = "response" if self.path.startswith("/api/generate") else "message"
        empty = "" if key == "response" else {"role": "assistant", "content": ""}
        if keep == 0:
            self.app.resolver(name)  # 404 for an unknown model
            self.app.manager.unload(name)
            reason = "unload"
        else:
            with self.engine_for(name, keep_alive):
                pass
            reason = "load"
        self.send_json(200, {"model": name, "created_at": now_iso(), key: empty, "done": True, "done_reason": reason})
        return True

    def ollama_generate(self) -> None:
        from dx.ollama_api import generate_request, model_name, require_object

        doc = require_object(self.read_json())
        name = model_name(doc)
        if not doc.get("prompt") and not doc.get("suffix"):
            self._ollama_load_only(doc, name)
            return
        path, body, num_ctx = generate_request(doc)
        self._ollama_complete(name, doc, path, body, num_ctx, "response")

    def ollama_chat(self) -> None:
        from dx.ollama_api import chat_request, model_name, require_object

        doc = require_object(self.read_json())
        name = model_name(doc)
        body, num_ctx = chat_request(doc)
        if not body["messages"]:
            self._ollama_load_only(doc, name)
            return
        self._ollama_complete(name, doc, "/v1/chat/completions", body, num_ctx, "message")

    def _ollama_complete(
        self, name: str, doc: dict[str, Any], path: str, body: dict[str, Any], num_ctx: int | None, key: str,
    ) -> None:
        from dx.ollama_api import engine_error_message, now_iso
        from dx.openai_proxy import EngineUnavailable

        started = time.monotonic()
        cm, _engine, load, conn, resp = self._open(
            name, doc.get("keep_alive"), num_ctx, "POST", path, json.dumps(body).encode()
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
                self._ollama_stream(name, resp, started, load, key)
            else:
                try:
                    answer = json.loads(resp.read())
                except (OSError, ValueError, http.client.HTTPException) as exc:
                    raise _EngineError(503, f"the engine stopped while answering ({type(exc).__name__}); retry") \
                        from None
                self.send_json(200, self._ollama_final(name, answer, started, load, key, now_iso()))
        except EngineUnavailable as exc:
            self.close_connection = True
            if not self._headers_sent:
                raise _EngineError(503, f"{exc}; retry the request") from None
        finally:
            conn.close()
            cm.__exit__(None, None, None)

    @staticmethod
    def _ollama_final(name: str, answer: dict[str, Any], started: float, load: float, key: str, ts: str) -> dict:
        from dx.ollama_api import done_fields, tool_calls_to_ollama

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
            out["response"] = choice.get("text") if "text" in choice else (choice.get("message") or {}).get(
                "content", "")
        out.update(done_fields(choice.get("finish_reason"), answer.get("timings"), answer.get("usage"), started, load))
        return out

    def _start_ndjson(self) -> Callable[[dict[str, Any]], None]:
        """Begin a chunked NDJSON response (Ollama's streaming shape); returns the line writer."""
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        out = self.wfile

        def emit(doc: dict[str, Any]) -> None:
            line = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
            out.write(b"%x\r\n%b\r\n" % (len(line), line))

        return emit

    def _ollama_stream(self, name: str, resp: Any, started: float, load: float, key: str) -> None:
        from dx.ollama_api import done_fields, now_iso, sse_events, tool_calls_to_ollama
        from dx.openai_proxy import EngineUnavailable, iter_chunks

        emit = self._start_ndjson()
        out = self.wfile

        finish, timings, usage = None, None, None
        tool_calls: dict[int, dict[str, Any]] = {}
        try:
            for event in sse_events(iter_chunks(resp)):
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
                            fn = tc.get("function") or {}
                            slot["function"]["name"] += fn.get("name") or ""
                            slot["function"]["arguments"] += fn.get("arguments") or ""
                        text = delta.get("content")
                        thinking = delta.get("reasoning_content")
                        if text or thinking:
                            msg: dict[str, Any] = {"role": "assistant", "content": text or ""}
                            if thinking:
                                msg["thinking"] = thinking
                            emit({"model": name, "created_at": now_iso(), "message": msg, "done": False})
                    else:
                        text = choice.get("text")
                        if text is None:
                            text = (choice.get("delta") or {}).get("content")
                        if text:
                            emit({"model": name, "created_at": now_iso(), "response": text, "done": False})
        except EngineUnavailable as exc:
            emit({"error": f"{exc}; retry the request"})
            out.write(b"0\r\n\r\n")
            raise
        final: dict[str, Any] = {"model": name, "created_at": now_iso()}
        if key == "message":
            final["message"] = {"role": "assistant", "content": ""}
            if tool_calls:
                final["message"]["tool_calls"] = tool_calls_to_ollama([tool_calls[i] for i in sorted(tool_calls)])
        else:
            final["response"] = ""
        final.update(done_fields(finish, timings, usage, started, load))
        emit(final)
        out.write(b"0\r\n\r\n")

    def ollama_embed(self) -> None:
        from dx.ollama_api import embed_input, model_name, require_object

        doc = require_object(self.read_json())
        name = model_name(doc)
        texts = embed_input(doc, "input")
        started = time.monotonic()
        answer, load = self._embed(name, doc.get("keep_alive"), texts)
        vectors = [item.get("embedding") for item in sorted(answer.get("data", []), key=lambda d: d.get("index", 0))]
        self.send_json(200, {
            "model": name, "embeddings": vectors,
            "total_duration": int((time.monotonic() - started) * 1e9), "load_duration": int(load * 1e9),
            "prompt_eval_count": int((answer.get("usage") or {}).get("prompt_tokens", 0)),
        })

    def ollama_embeddings(self) -> None:
        from dx.ollama_api import embed_input, model_name, require_object

        doc = require_object(self.read_json())
        name = model_name(doc)
        prompt = embed_input(doc, "prompt")
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string")
        answer, _load = self._embed(name, doc.get("keep_alive"), prompt)
        data = answer.get("data") or [{}]
        self.send_json(200, {"embedding": data[0].get("embedding", [])})

    def _embed(self, name: str, keep_alive: object, texts: list[str] | str) -> tuple[dict[str, Any], float]:
        from dx.ollama_api import engine_error_message
        from dx.openai_proxy import EngineUnavailable, engine_json

        with self.engine_for(name, keep_alive, purpose="embed") as (engine, load):
            try:
                status, answer = engine_json(engine, "/v1/embeddings", {"input": texts})
            except EngineUnavailable as exc:
                raise _EngineError(503, f"{exc}; retry the request") from None
        if status != 200:
            raise HTTPError(status if 400 <= status < 600 else 502, engine_error_message(answer, status))
        return answer, load

    def ollama_pull(self) -> None:
        from dx.ollama_api import model_name, require_object

        doc = require_object(self.read_json())
        name = model_name(doc)
        from dx.model_names import is_hf

        stream = doc.get("stream", True)
        if not isinstance(stream, bool):
            raise BadRequest("stream must be true or false")
        store = self.app.resolver.store
        if not stream:
            store.pull(name) if is_hf(name) else store.get(name)
            self.send_json(200, {"status": "success"})
            return
        emit = self._start_ndjson()
        out = self.wfile

        def progress(status: str, completed: int | None, total: int | None) -> None:
            if status == "success":
                return
            line: dict[str, Any] = {"status": status}
            if total:
                line.update(total=total, completed=completed or 0)
            emit(line)

        try:
            if is_hf(name):
                store.pull(name, progress=progress)
            else:
                store.get(name)  # already here: Ollama answers success for a present model
            emit({"status": "success"})
        except DXError as exc:
            emit({"error": str(exc)})
        out.write(b"0\r\n\r\n")

    def ollama_delete(self) -> None:
        from dx.ollama_api import model_name, require_object

        doc = require_object(self.read_json())
        name = model_name(doc)
        source = None
        with contextlib.suppress(ModelNotFound):
            source = self.app.resolver(name)
        self.app.resolver.store.delete(name)  # 404 / 403 (Ollama's own models) from the store
        if source is not None and not source.path.exists():  # the blob went with its last name
            self.app.manager.unload_source(source)
        self.send_json(200, {})

    def ollama_copy(self) -> None:
        from dx.ollama_api import require_object

        doc = require_object(self.read_json())
        src, dst = doc.get("source"), doc.get("destination")
        if not isinstance(src, str) or not isinstance(dst, str) or not src or not dst:
            raise BadRequest("source and destination must be model names")
        self.app.resolver.store.copy(src, dst)
        self.send_json(200, {})


class _EngineError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _mtime(source: ModelSource) -> float:
    try:
        return source.path.stat().st_mtime
    except OSError:
        return 0.0


def _iso_mtime(source: ModelSource) -> str:
    from dx.ollama_api import iso

    return iso(_mtime(source))


def make_server(host: str, port: int, app: App) -> DXHTTPServer:
    """Bind the server (raises ConfigurationError when the address is taken)."""
    try:
        return DXHTTPServer((host, port), app)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="another server (Ollama?) may be using it; pick another with --port",
        ) from None
