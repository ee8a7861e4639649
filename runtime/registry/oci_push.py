"""Pushing to an OCI (Docker distribution) registry as Ollama does: the wire half of ``dx push``.

The reverse of ``dx.registry.ollama``'s pull, in the distribution protocol's own steps:

* ``HEAD /v2/<ns>/<model>/blobs/<digest>``: a blob the repository already has is not sent again.
* ``POST /v2/<ns>/<model>/blobs/uploads/?mount=<digest>&from=<ns>/<other>``: a blob DX knows is in
  another repository of the same registry is mounted there (201), no bytes sent; a registry that
  cannot mount it answers 202 with an upload session instead, which DX then fills.
* ``POST /v2/<ns>/<model>/blobs/uploads/`` (202 + ``Location``), then either one
  ``PUT <location>?digest=<digest>`` with the whole blob (monolithic), or ``PATCH`` parts of
  ``chunk`` bytes with ``Content-Range`` in order and a closing ``PUT ?digest=`` with no body
  (chunked). Bytes are read from disk as they are sent; the registry hashes what it got and
  refuses a digest that does not match (DIGEST_INVALID), so nothing wrong is ever committed.
* ``PUT /v2/<ns>/<model>/manifests/<tag>`` with Docker's manifest media type; the registry's
  ``Docker-Content-Digest`` must be the SHA-256 of the bytes sent (the digest DX reports).

Every failure is a one-line ``DownloadError`` (HTTP 502 on the API: the registry's failure, not
DX's), naming the registry and what it said; credentials (``DX_OLLAMA_TOKEN``) go to the
registry's own host only, as for pulls.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dx.errors import DownloadError
from dx.registry import ollama as reg
from dxverify.errors import IntegrityError

CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
CHUNK = 64 << 20          # blobs larger than this go up in PATCH parts of this size
_BLOCK = 1 << 20
TIMEOUT = 120.0

# progress(completed_bytes) while a blob's bytes go up
BytesProgress = Callable[[int], None]


def media(kind: str) -> str:
    """Ollama's media type for a layer kind (``model`` -> ``application/vnd.ollama.image.model``)."""
    return reg.LAYER_PREFIX + kind


@dataclass(frozen=True)
class Blob:
    """One layer to push: its descriptor, and where its bytes are (a file section, or small bytes in memory)."""

    layer: reg.Layer
    path: Path | None = None
    offset: int = 0
    data: bytes | None = None

    @classmethod
    def of_bytes(cls, media_type: str, data: bytes) -> Blob:
        return cls(reg.Layer(media_type, hashlib.sha256(data).hexdigest(), len(data)), data=data)

    def reader(self, start: int = 0, length: int | None = None) -> _Section:
        """``length`` bytes from ``start`` within the blob, read as they are sent (never the whole file)."""
        n = self.layer.size - start if length is None else length
        if self.data is not None:
            import io

            return _Section(io.BytesIO(self.data), start, n)
        assert self.path is not None
        return _Section(open(self.path, "rb"), self.offset + start, n)  # closed by _Section


class _Section:
    """A file-like window on a file, for http.client to stream (it calls read(blocksize) until b'')."""

    def __init__(self, f: BinaryIO, start: int, length: int) -> None:
        self.f, self.left = f, length
        f.seek(start)
        self.on_read: BytesProgress | None = None
        self.sent = 0

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        block = self.f.read(self.left if n is None or n < 0 else min(n, self.left))
        if not block:
            raise DownloadError("a layer's file got shorter while it was being pushed",
                                hint="something changed the model file; push again")
        self.left -= len(block)
        self.sent += len(block)
        if self.on_read:
            self.on_read(self.sent)
        return block

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> _Section:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def _request(name: reg.RegistryName, method: str, url: str, headers: dict[str, str] | None = None,
             body: _Section | bytes | None = None, length: int = 0) -> _Answer:
    """One request to the registry; the body, when a file section, is streamed with its Content-Length."""
    registry = urllib.parse.urlsplit(reg.base_url(name)).netloc
    parts = urllib.parse.urlsplit(url)
    h = reg._headers(url, registry, headers)
    if body is not None or method in ("PUT", "PATCH", "POST"):
        h["Content-Length"] = str(len(body) if isinstance(body, bytes) else length if body is not None else 0)
    conn_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_type(parts.netloc, timeout=TIMEOUT, blocksize=_BLOCK)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, target, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read(1 << 20) if method != "HEAD" else b""
        return _Answer(resp.status, resp.headers, data)
    except DownloadError:
        raise
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or str(exc) or exc.__class__.__name__
        raise DownloadError(f"pushing {name.short} to {reg.base_url(name)} failed: {reason}",
                            hint=f"check the registry address (--insecure for plain HTTP, or "
                                 f"{reg.REGISTRY_ENV}) and push again: blobs already there are not sent twice"
                            ) from None
    finally:
        conn.close()


def _refused(name: reg.RegistryName, what: str, answer: _Answer) -> DownloadError:
    """The registry said no: its status and its own first error message, one line."""
    said = ""
    try:
        errors = json.loads(answer.body).get("errors") or []
        if errors:
            said = f": {errors[0].get('code', '')} {errors[0].get('message', '')}".rstrip()
    except (ValueError, AttributeError, TypeError):
        pass
    said = " ".join(said.split())[:200]
    where = reg.base_url(name)
    if answer.status == 401:
        hint = f"set {reg.TOKEN_ENV} to a bearer token this registry accepts"
        return DownloadError(f"{where} asks for a token to push {name.short} (HTTP 401{said})", hint=hint)
    hint = "check the name and your rights on this registry; nothing half-written is used"
    if "DIGEST_INVALID" in said:
        hint = "the bytes sent do not hash to the layer's digest: the model file changed or is damaged"
    return DownloadError(f"{where} refused {what} of {name.short} (HTTP {answer.status}{said})", hint=hint)


def _repo_url(name: reg.RegistryName, *rest: str) -> str:
    return "/".join([reg.base_url(name), "v2", name.repository, *rest])


def blob_exists(name: reg.RegistryName, layer: reg.Layer) -> bool:
    """Does the repository already have this blob? (Then it is not sent again.)"""
    answer = _request(name, "HEAD", _repo_url(name, "blobs", layer.digest))
    if answer.status == 200:
        return True
    if answer.status == 404:
        return False
    raise _refused(name, f"the {layer.kind} layer check", answer)


def start_upload(name: reg.RegistryName, layer: reg.Layer, mount_from: str | None = None) -> str | None:
    """Open an upload session (its URL), or mount the blob from ``mount_from`` (None: mounted, nothing to send)."""
    url = _repo_url(name, "blobs", "uploads/")
    if mount_from:
        url += "?" + urllib.parse.urlencode({"mount": layer.digest, "from": mount_from})
    answer = _request(name, "POST", url)
    if answer.status == 201 and mount_from:
        return None
    if answer.status != 202 or not answer.headers.get("Location"):
        raise _refused(name, f"an upload of the {layer.kind} layer", answer)
    return urllib.parse.urljoin(url, answer.headers["Location"])


def _with_digest(location: str, layer: reg.Layer) -> str:
    parts = urllib.parse.urlsplit(location)
    query = [*urllib.parse.parse_qsl(parts.query, keep_blank_values=True), ("digest", layer.digest)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def upload(name: reg.RegistryName, blob: Blob, location: str, *, chunk: int = CHUNK,
           progress: BytesProgress | None = None) -> None:
    """Send ``blob``'s bytes into the session at ``location``: one PUT, or PATCH parts and a closing PUT."""
    layer, octets = blob.layer, {"Content-Type": "application/octet-stream"}
    if layer.size <= chunk:
        with blob.reader() as body:
            body.on_read = progress
            answer = _request(name, "PUT", _with_digest(location, layer), octets, body, layer.size)
        if answer.status != 201:
            raise _refused(name, f"the {layer.kind} layer sha256:{layer.sha256[:12]}", answer)
        return
    start = 0
    while start < layer.size:
        n = min(chunk, layer.size - start)
        with blob.reader(start, n) as body:
            if progress:
                body.on_read = _shifted(progress, start)
            answer = _request(name, "PATCH", location,
                              {**octets, "Content-Range": f"{start}-{start + n - 1}"}, body, n)
        if answer.status != 202 or not answer.headers.get("Location"):
            raise _refused(name, f"part {start}-{start + n - 1} of the {layer.kind} layer", answer)
        location = urllib.parse.urljoin(location, answer.headers["Location"])
        start += n
    answer = _request(name, "PUT", _with_digest(location, layer), octets, b"")
    if answer.status != 201:
        raise _refused(name, f"the {layer.kind} layer sha256:{layer.sha256[:12]}", answer)


def _shifted(progress: BytesProgress, start: int) -> BytesProgress:
    return lambda sent: progress(start + sent)


def put_manifest(name: reg.RegistryName, raw: bytes) -> str:
    """PUT the manifest under the tag; the digest the registry says it stored must be the SHA-256 of ``raw``."""
    url = _repo_url(name, "manifests", urllib.parse.quote(name.tag, safe=""))
    answer = _request(name, "PUT", url, {"Content-Type": reg.MANIFEST_TYPE}, raw)
    if answer.status not in (200, 201):
        raise _refused(name, "the manifest", answer)
    ours = "sha256:" + hashlib.sha256(raw).hexdigest()
    said = (answer.headers.get("Docker-Content-Digest") or "").strip()
    if said and said != ours:
        raise IntegrityError(f"{reg.base_url(name)} stored the manifest of {name.short} as {said}, "
                             f"but its bytes hash to {ours}", hint="a proxy changed it; push again")
    return ours


def manifest_bytes(config: Blob, layers: list[Blob]) -> bytes:
    """The manifest Ollama writes: schemaVersion 2, Docker's media type, the config, the layers (compact JSON)."""
    doc = {"schemaVersion": 2, "mediaType": reg.MANIFEST_TYPE, "config": config.layer.to_json(),
           "layers": [b.layer.to_json() for b in layers]}
    return json.dumps(doc, separators=(",", ":")).encode()


def throttled(say: Callable[[int], None], every: float = 0.1) -> BytesProgress:
    """A byte counter that reports at most every ``every`` seconds (and always the last byte)."""
    last = [0.0]

    def tick(sent: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            say(sent)

    return tick

