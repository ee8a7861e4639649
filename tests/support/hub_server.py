"""A tiny Hugging Face–compatible file server on loopback, for the real huggingface_hub client.

Hugging Face itself is unreachable here, so tests point ``HF_ENDPOINT`` at this
server. It serves ``/{owner}/{repo}/resolve/{revision}/{file}`` with the headers
``hf_hub_download`` relies on (``X-Repo-Commit``, a quoted ``ETag`` that is the
file's SHA-256 as the Hub does for LFS files, ``Content-Length``, ``Accept-Ranges``
and ``Range`` → 206), for HEAD and GET. Faults are switched on per file:
``drop_first`` closes the first full GET half-way, ``drop_always`` closes every
GET half-way, ``corrupt`` serves different bytes than the ETag promises, ``slow``
sends 1 MiB every ``delay`` seconds (time to kill a pull mid-way).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class HubFile:
    data: bytes
    etag: str | None = None           # default: SHA-256 of the true bytes (LFS style)
    fault: str | None = None          # None | "drop_first" | "drop_always" | "corrupt" | "slow"
    gets: int = 0
    delay: float = 0.2                # seconds per MiB when fault == "slow"


@dataclass
class FakeHub:
    """Files by (repo_id, filename); every request is logged as (method, path, Range header)."""

    files: dict[tuple[str, str], HubFile] = field(default_factory=dict)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def add(self, repo_id: str, filename: str, path_or_bytes: Path | bytes, **kw: object) -> HubFile:
        data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
        f = HubFile(data=data, **kw)  # type: ignore[arg-type]
        if f.etag is None:
            f.etag = hashlib.sha256(data).hexdigest()
        self.files[(repo_id, filename)] = f
        return f

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                hub.log.append((self.command, self.path, self.headers.get("Range")))
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
                f = hub.files.get((unquote(m.group(1)), unquote(m.group(3)))) if m else None
                if f is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    return
                data = f.data
                if f.fault == "corrupt":
                    mid = len(data) - 4096  # inside the tensor data: structure stays valid, hash does not
                    data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:]
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and (rm := _RANGE.match(rng)):
                    start, status = int(rm.group(1)), 206
                self.send_response(status)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{f.etag}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Connection", "close")
                self.end_headers()
                if not body:
                    return
                f.gets += 1
                drop = f.fault == "drop_always" or (f.fault == "drop_first" and f.gets == 1)
                end = start + (len(data) - start) // 2 if drop else len(data)
                view = memoryview(data)
                step = 1 << 20
                for i in range(start, end, step):
                    self.wfile.write(view[i:min(i + step, end)])
                    if f.fault == "slow":
                        self.wfile.flush()
                        time.sleep(f.delay)
                self.wfile.flush()
                if drop:
                    self.close_connection = True
                    self.connection.shutdown(2)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def gets(self, filename: str) -> list[tuple[str, str, str | None]]:
        return [r for r in self.log if r[0] == "GET" and r[1].endswith("/" + filename)]
