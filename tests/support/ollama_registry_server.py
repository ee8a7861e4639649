"""A FAKE of Ollama's remote registry, on loopback: the one stand-in in the registry tests.

The real registry (registry.ollama.ai) is unreachable here, so tests point
``DX_OLLAMA_REGISTRY`` at this. It is as thin as the protocol allows and serves
what the real one serves: manifests in Ollama's shape (schemaVersion 2, a config
blob, layers with Ollama's media types, compact JSON, ``Docker-Content-Digest``)
at ``/v2/<ns>/<model>/manifests/<tag>``, and for ``/v2/<ns>/<model>/blobs/sha256:<hex>``
a 307 redirect to a second loopback server (another port, so another host to a
client) standing in for the CDN. The CDN answers ``Range`` with 206, records
every request, and refuses (400) and records any request that carries an
``Authorization`` header: credentials must never cross the redirect.

Faults: ``token`` makes the registry answer 401 + ``WWW-Authenticate`` unless
``Authorization: Bearer <token>`` is sent; ``delay`` sleeps that long after
every MiB the CDN sends (time to kill a pull mid-blob); ``corrupt`` (a set of
digests) flips one byte of those blobs; ``stall_once`` (a set of digests) makes
the first GET of those blobs send half its bytes and then go silent.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def media(kind: str) -> str:
    return f"application/vnd.ollama.image.{kind}"


class _Quiet(ThreadingHTTPServer):
    """A client that hangs up mid-blob (a pull killed on purpose) is not an error worth a traceback."""

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


@dataclass
class FakeRegistry:
    """Models by (namespace/model, tag); blobs by hex digest. Logs are lists of dicts."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], bytes] = field(default_factory=dict)
    registry_log: list[dict[str, str | None]] = field(default_factory=list)
    cdn_log: list[dict[str, str | None]] = field(default_factory=list)
    auth_leaks: list[str] = field(default_factory=list)
    token: str | None = None
    delay: float = 0.0
    corrupt: set[str] = field(default_factory=set)
    stall_once: set[str] = field(default_factory=set)
    url: str = ""
    cdn_url: str = ""
    _servers: list[ThreadingHTTPServer] = field(default_factory=list)

    def add_blob(self, data: bytes) -> dict[str, object]:
        hexd = hashlib.sha256(data).hexdigest()
        self.blobs[hexd] = data
        return {"digest": f"sha256:{hexd}", "size": len(data)}

    def add_model(self, repository: str, tag: str, model: Path | bytes, *, params: dict | None = None,
                  template: str | None = None, system: str | None = None,
                  licenses: tuple[str, ...] = ()) -> bytes:
        """Publish a model; returns the manifest's bytes (their SHA-256 is the model's digest)."""
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        layers = [{"mediaType": media("model"), **self.add_blob(data)}]
        if template is not None:
            layers.append({"mediaType": media("template"), **self.add_blob(template.encode())})
        if system is not None:
            layers.append({"mediaType": media("system"), **self.add_blob(system.encode())})
        for text in licenses:
            layers.append({"mediaType": media("license"), **self.add_blob(text.encode())})
        if params is not None:
            layers.append({"mediaType": media("params"), **self.add_blob(json.dumps(params).encode())})
        config = {"model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
                  "model_type": "135M", "file_type": "Q4_1", "architecture": "amd64", "os": "linux",
                  "rootfs": {"type": "layers", "diff_ids": [ly["digest"] for ly in layers]}}
        doc = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
               "config": {"mediaType": CONFIG_TYPE, **self.add_blob(json.dumps(config).encode())},
               "layers": layers}
        raw = json.dumps(doc, separators=(",", ":")).encode()
        self.manifests[(repository, tag)] = raw
        return raw

    def start(self) -> FakeRegistry:
        reg = self

        class Registry(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                reg.registry_log.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                                         "accept": self.headers.get("Accept"), "range": self.headers.get("Range")})
                if reg.token and self.headers.get("Authorization") != f"Bearer {reg.token}":
                    self._send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                               {"WWW-Authenticate": 'Bearer realm="http://127.0.0.1/token",service="fake",'
                                                    'scope="repository:pull"'})
                    return
                m = re.fullmatch(r"/v2/([^/]+/[^/]+)/manifests/([^/?]+)", self.path)
                if m:
                    raw = reg.manifests.get((m.group(1), m.group(2)))
                    if raw is None or MANIFEST_TYPE not in (self.headers.get("Accept") or ""):
                        self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
                        return
                    self._send(200, raw, {"Content-Type": MANIFEST_TYPE,
                                          "Docker-Content-Digest": "sha256:" + hashlib.sha256(raw).hexdigest()})
                    return
                m = re.fullmatch(r"/v2/[^/]+/[^/]+/blobs/sha256:([0-9a-f]{64})", self.path)
                if m and m.group(1) in reg.blobs:
                    self._send(307, b"", {"Location": f"{reg.cdn_url}/blobs/sha256-{m.group(1)}?sig=abc"})
                    return
                self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class CDN(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                reg.cdn_log.append({"path": self.path, "range": self.headers.get("Range"), "authorization": auth})
                if auth is not None:
                    reg.auth_leaks.append(self.path)
                    self.send_response(400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                m = re.fullmatch(r"/blobs/sha256-([0-9a-f]{64})\?sig=abc", self.path)
                data = reg.blobs.get(m.group(1)) if m else None
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                hexd = m.group(1)  # type: ignore[union-attr]
                if hexd in reg.corrupt:
                    mid = len(data) - 4096 if len(data) > 8192 else len(data) // 2
                    data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:]
                start, end, status = 0, len(data) - 1, 200
                rm = _RANGE.match(self.headers.get("Range") or "")
                if rm:
                    start, status = int(rm.group(1)), 206
                    end = min(int(rm.group(2)), len(data) - 1) if rm.group(2) else len(data) - 1
                self.send_response(status)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                stall = hexd in reg.stall_once
                reg.stall_once.discard(hexd)
                view = memoryview(data)
                step = 1 << 20
                half = start + (end + 1 - start) // 2
                for i in range(start, end + 1, step):
                    if stall and i >= half:
                        time.sleep(30)  # silent, connection open: the client must notice and retry
                        return
                    self.wfile.write(view[i:min(i + step, end + 1)])
                    if reg.delay:
                        self.wfile.flush()
                        time.sleep(reg.delay)

        for handler in (Registry, CDN):
            server = _Quiet(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def cdn_ranges(self, hexd: str) -> list[str | None]:
        return [r["range"] for r in self.cdn_log if hexd in (r["path"] or "")]
