"""Ollama's model registry with the standard library: ``dx pull llama3.2`` (also inside an executable).

The protocol is the Docker distribution API as Ollama uses it:

* ``GET {base}/v2/<namespace>/<model>/manifests/<tag>`` with
  ``Accept: application/vnd.docker.distribution.manifest.v2+json`` gives a JSON
  manifest whose layers each carry a media type
  (``application/vnd.ollama.image.model`` is the GGUF; ``.template``, ``.system``, ``.messages``, ``.draft``,
  ``.params``, ``.license``, ``.projector``, ``.adapter`` the rest), a
  ``sha256:`` digest and a size. The manifest's own digest is the SHA-256 of its bytes.
* ``GET {base}/v2/<namespace>/<model>/blobs/sha256:<hex>`` answers with a redirect
  (307) to a CDN; DX follows it itself and never sends a credential to another host.

Names are Ollama's: ``[host/][namespace/]model[:tag]`` with the defaults
``registry.ollama.ai``, ``library`` and ``latest``; ``hf.co/OWNER/REPO:QUANT`` is
the same protocol with ``hf.co`` as the host; ``--insecure`` (``"insecure": true``
on the API) speaks plain HTTP to the host, as Ollama's does. ``DX_OLLAMA_REGISTRY`` (a base URL
such as ``http://127.0.0.1:8080``) sends every registry request there instead of
``https://<host>`` (tests, mirrors). Pulls are anonymous; a registry that asks
for a token (401 + ``WWW-Authenticate``) gets ``DX_OLLAMA_TOKEN`` as a bearer
token if the user set one, and is otherwise answered with a one-line error.

Big blobs come in parallel ``Range`` parts written in place into
``<dest>/sha256-<hex>.partial``; a small JSON state file beside it records how
far each part got, so a pull that was killed — even with SIGKILL — asks only
for the bytes it lacks. A part that receives nothing for ``DX_PULL_STALL_S``
seconds (default 30) is dropped and asked again, a bounded number of times.
When every byte is in, the SHA-256 is checked against the layer's digest; a
mismatch deletes the partial and names the layer.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from dx import __version__, config
from dx.errors import DiskFullError, DownloadError, ModelNotFoundError
from dxverify.errors import ConfigurationError, IntegrityError, MalformedInputError
from dxverify.hashing import sha256_file

REGISTRY_ENV, TOKEN_ENV = config.OLLAMA_REGISTRY_ENV, config.OLLAMA_TOKEN_ENV  # named in messages
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
LAYER_PREFIX = "application/vnd.ollama.image."
KINDS = ("model", "template", "system", "params", "license", "projector", "adapter", "draft", "messages")
SMALL_KINDS = ("template", "system", "params", "license", "messages")
MAX_MANIFEST = 1 << 20
MAX_SMALL_LAYER = 4 << 20
PART_MIN = 16 << 20          # a part is at least this big (blobs under 32 MiB come in one part)
TIMEOUT = 30.0
_BLOCK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}(:[0-9]{1,5})?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")

Progress = Callable[[str, "int | None", "int | None"], None]


@dataclass(frozen=True)
class RegistryName:
    """``host/namespace/model:tag``, every part filled in; ``insecure``: plain HTTP to ``host`` (Ollama's ``--insecure``)."""

    host: str
    namespace: str
    model: str
    tag: str
    insecure: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def short(self) -> str:
        """The name as Ollama shows it: default host and ``library`` left out (``llama3.2:3b``)."""
        if self.host != DEFAULT_HOST:
            return str(self)
        if self.namespace != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def repository(self) -> str:
        return f"{self.namespace}/{self.model}"

    def plain_http(self, insecure: bool = True) -> RegistryName:
        """The same name reached over plain HTTP (a registry on loopback or a LAN without TLS)."""
        return replace(self, insecure=insecure)


def parse_registry_name(text: str) -> RegistryName:
    """Parse ``[host/][namespace/]model[:tag]`` as Ollama does (parts are read from the right)."""
    raw = text.strip()
    name, sep, tag = raw.rpartition(":")
    if not sep or "/" in tag:
        name, tag = raw, DEFAULT_TAG
    parts = name.split("/") if name else []
    if not 1 <= len(parts) <= 3:
        raise ConfigurationError(f"invalid registry model name {text!r}",
                                 hint="write [host/][namespace/]model[:tag], e.g. llama3.2:3b")
    host = parts[0] if len(parts) == 3 else DEFAULT_HOST
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    model = parts[-1]
    if not _HOST.fullmatch(host) or not _PART.fullmatch(namespace) or not _PART.fullmatch(model):
        raise ConfigurationError(f"invalid registry model name {text!r}",
                                 hint="parts use letters, digits, '.', '_' and '-'")
    if not _TAG.fullmatch(tag):
        raise ConfigurationError(f"invalid tag {tag!r} in {text!r}",
                                 hint="tags use letters, digits, '.', '_' and '-' (at most 128)")
    return RegistryName(host, namespace, model, tag)


@dataclass(frozen=True)
class Layer:
    media_type: str
    sha256: str
    size: int

    @property
    def kind(self) -> str:
        """``model``, ``params``, … (the media type's last word); unknown types keep their full name."""
        return self.media_type[len(LAYER_PREFIX):] if self.media_type.startswith(LAYER_PREFIX) else self.media_type

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"

    def to_json(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest and the SHA-256 of its exact bytes (what Ollama calls the model's digest)."""

    raw: bytes
    sha256: str
    layers: tuple[Layer, ...]
    config: Layer | None

    @classmethod
    def parse(cls, raw: bytes, where: str) -> Manifest:
        if len(raw) > MAX_MANIFEST:
            raise MalformedInputError(f"{where}: manifest larger than {MAX_MANIFEST} bytes")
        try:
            doc = json.loads(raw)
            if doc.get("schemaVersion") != 2:
                raise ValueError(f"schemaVersion {doc.get('schemaVersion')!r}, expected 2")
            layers = tuple(_layer(d) for d in doc["layers"])
            config = _layer(doc["config"]) if doc.get("config") else None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise MalformedInputError(f"{where}: not an Ollama manifest: {e}") from None
        return cls(raw, hashlib.sha256(raw).hexdigest(), layers, config)

    def of_kind(self, kind: str) -> list[Layer]:
        return [ly for ly in self.layers if ly.kind == kind]

    def model_layer(self, where: str) -> Layer:
        models = self.of_kind("model")
        if len(models) != 1:
            raise MalformedInputError(f"{where}: the manifest has {len(models)} model layers, expected 1")
        return models[0]


def _layer(d: object) -> Layer:
    if not isinstance(d, dict):
        raise TypeError("a layer is not an object")
    algo, _, hexd = str(d["digest"]).partition(":")
    size = d["size"]
    if algo != "sha256" or not _HEX64.fullmatch(hexd):
        raise ValueError(f"digest {d['digest']!r} is not sha256:<64 hex>")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"layer size {size!r} is not a non-negative integer")
    return Layer(str(d.get("mediaType", "")), hexd, size)


# ---- HTTP ---------------------------------------------------------------------


def base_url(name: RegistryName) -> str:
    """``DX_OLLAMA_REGISTRY`` when set, else ``https://<host>`` (``http://`` for an insecure name)."""
    override = config.ollama_registry_override()
    return override or f"{'http' if name.insecure else 'https'}://{name.host}"


def manifest_url(name: RegistryName) -> str:
    return f"{base_url(name)}/v2/{name.repository}/manifests/{urllib.parse.quote(name.tag, safe='')}"


def blob_url(name: RegistryName, layer: Layer) -> str:
    return f"{base_url(name)}/v2/{name.repository}/blobs/{layer.digest}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None  # DX follows redirects itself, so it decides which headers go along


_OPENER = urllib.request.build_opener(_NoRedirect)


def _headers(url: str, registry: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    h = {"User-Agent": f"dx/{__version__}", "Accept-Encoding": "identity"}
    token = (config.ollama_token_env() or "").strip()
    if token and urllib.parse.urlsplit(url).netloc == registry:
        h["Authorization"] = f"Bearer {token}"  # never to another host (the CDN)
    h.update(extra or {})
    return h


def _open(url: str, name: RegistryName, extra: dict[str, str] | None = None,
          timeout: float = TIMEOUT) -> http.client.HTTPResponse:
    """GET ``url``, following up to 5 redirects; credentials only ever go to the registry's own host."""
    registry = urllib.parse.urlsplit(base_url(name)).netloc
    for _hop in range(6):
        req = urllib.request.Request(url, headers=_headers(url, registry, extra))
        try:
            return _OPENER.open(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code in (301, 302, 303, 307, 308) and exc.headers.get("Location"):
                url = urllib.parse.urljoin(url, exc.headers["Location"])
                exc.close()
                continue
            raise _http_error(name, url, exc) from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise _net_error(name, exc) from None
    raise DownloadError(f"{base_url(name)} redirected {name} more than 5 times", hint="check DX_OLLAMA_REGISTRY")


def _http_error(name: RegistryName, url: str, exc: urllib.error.HTTPError) -> Exception:
    where = urllib.parse.urlsplit(url).netloc or base_url(name)
    if exc.code == 401:
        challenge = " ".join((exc.headers.get("WWW-Authenticate") or "").split())[:160]
        if config.ollama_token_env():
            return DownloadError(f"{where} refused the token in {TOKEN_ENV} for {name} (HTTP 401)",
                                 hint="check the token; nothing was stored")
        return DownloadError(
            f"{where} asks for a token to pull {name}" + (f" ({challenge})" if challenge else "")
            + "; DX pulls anonymously", hint=f"set {TOKEN_ENV} to a bearer token for this registry")
    if exc.code == 404:
        return ModelNotFoundError(f"{name.short} not found at {base_url(name)}",
                                  hint="check the name and tag (ollama.com/library lists them)")
    if exc.code == 403:
        return DownloadError(f"{where} refused {name} (HTTP 403)", hint="the model may be private")
    return DownloadError(f"{where} answered HTTP {exc.code} for {name}",
                         hint="run the pull again later; what was downloaded so far is kept")


def _net_error(name: RegistryName, exc: BaseException) -> DownloadError:
    reason = getattr(exc, "reason", None) or str(exc) or exc.__class__.__name__
    return DownloadError(f"pulling {name.short} from {base_url(name)} failed: {reason}",
                         hint=f"check the network (or {REGISTRY_ENV}; --insecure for a plain-HTTP "
                              "registry) and run the pull again: it resumes")


def fetch_manifest(name: RegistryName) -> Manifest:
    """The manifest of ``name``; a ``Docker-Content-Digest`` header, when sent, must match its bytes."""
    try:
        resp = _open(manifest_url(name), name, {"Accept": MANIFEST_TYPE})
    except ModelNotFoundError:  # Ollama's own words for it, which its clients show as they are
        raise ModelNotFoundError("pull model manifest: file does not exist",
                                 hint=f"{name.short} not found at {base_url(name)}; check the name and tag") from None
    with resp:
        try:
            raw = resp.read(MAX_MANIFEST + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise _net_error(name, exc) from None
        claimed = (resp.headers.get("Docker-Content-Digest") or "").strip()
    manifest = Manifest.parse(raw, f"{name.short} (manifest)")
    if claimed and claimed != f"sha256:{manifest.sha256}":
        raise IntegrityError(f"the manifest of {name.short} hashes to sha256:{manifest.sha256}, "
                             f"but the registry says {claimed}", hint="a proxy changed it; nothing was stored")
    return manifest


def fetch_small(name: RegistryName, layer: Layer) -> bytes:
    """A small layer (template, params, license…) in memory, checked against its digest."""
    if layer.size > MAX_SMALL_LAYER:
        raise MalformedInputError(f"{name.short}: the {layer.kind} layer is {layer.size} bytes, "
                                  f"more than {MAX_SMALL_LAYER}")
    with _open(blob_url(name, layer), name) as resp:
        try:
            data = resp.read(layer.size + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise _net_error(name, exc) from None
    check_bytes(name, layer, data)
    return data


def check_bytes(name: RegistryName, layer: Layer, data: bytes) -> None:
    got = hashlib.sha256(data).hexdigest()
    if got != layer.sha256 or len(data) != layer.size:
        raise IntegrityError(f"{name.short}: the {layer.kind} layer has SHA-256 {got} ({len(data)} bytes), "
                             f"expected {layer.sha256} ({layer.size} bytes)",
                             hint="the registry or a proxy sent other bytes; nothing was stored")


# ---- big blobs: parallel Range parts, resumable -------------------------------


def default_parts() -> int:
    env = config.pull_parts_env()
    return max(1, min(16, int(env))) if env.isdigit() else 4


def _stall_seconds() -> float:
    with contextlib.suppress(ValueError):
        return max(0.5, float(config.pull_stall_env() or 30.0))
    return 30.0


def _plan(size: int, parts: int) -> list[list[int]]:
    """[start, end_inclusive, done] for each part; at least PART_MIN bytes a part."""
    n = max(1, min(parts, size // PART_MIN))
    step = -(-size // n) if size else 0
    return [[i, min(i + step, size) - 1, 0] for i in range(0, size, step)] if size else []


class _Download:
    """One blob into ``<dest>/sha256-<hex>.partial``, its parts' progress in ``….state.json``."""

    def __init__(self, name: RegistryName, layer: Layer, dest: Path, parts: int, progress: Progress | None,
                 attempts: int) -> None:
        self.name, self.layer, self.progress, self.attempts = name, layer, progress, attempts
        self.part = dest / f"sha256-{layer.sha256}.partial"
        self.state_path = dest / f"sha256-{layer.sha256}.state.json"
        self.stall = _stall_seconds()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.url: str | None = None  # the CDN URL the registry redirected to, shared by the parts
        self.ranges = self._load_or_plan(parts)

    def _load_or_plan(self, parts: int) -> list[list[int]]:
        size = self.layer.size
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            state = json.loads(self.state_path.read_text())
            ranges = [[int(a), int(b), int(c)] for a, b, c in state["parts"]]
            if (state["size"] == size and self.part.stat().st_size == size and ranges and ranges[0][0] == 0
                    and ranges[-1][1] == size - 1 and all(0 <= r[2] <= r[1] - r[0] + 1 for r in ranges)
                    and all(ranges[i][1] + 1 == ranges[i + 1][0] for i in range(len(ranges) - 1))):
                return ranges
        fd = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        ranges = _plan(size, parts)
        self._save(ranges)
        return ranges

    def _save(self, ranges: list[list[int]]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"size": self.layer.size, "digest": self.layer.digest, "parts": ranges}))
            os.replace(tmp, self.state_path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk: the last state saved stays (it never claims more bytes)
            raise

    def done_bytes(self) -> int:
        with self.lock:
            return sum(r[2] for r in self.ranges)

    def run(self) -> Path:
        had = self.done_bytes()
        if had and self.progress:
            self.progress(f"resuming {self.layer.kind} layer at {had} of {self.layer.size} bytes",
                          had, self.layer.size)
        fd = os.open(self.part, os.O_RDWR)
        threads = [threading.Thread(target=self._part_loop, args=(fd, i), daemon=True, name=f"dx-pull-{i}")
                   for i, r in enumerate(self.ranges) if r[2] < r[1] - r[0] + 1]
        try:
            for t in threads:
                t.start()
            last_save = last_say = 0.0
            while alive := [t for t in threads if t.is_alive()]:
                alive[0].join(0.1)
                now = time.monotonic()
                if now - last_save >= 0.5:
                    last_save = now
                    with self.lock:
                        self._save(self.ranges)
                if self.progress and now - last_say >= 0.1:
                    last_say = now
                    self.progress("downloading", self.done_bytes(), self.layer.size)
        except BaseException:
            self.stop.set()  # Ctrl-C: the parts stop at their next block; what arrived is kept
            for t in threads:
                t.join(5)
            raise
        finally:
            with self.lock, contextlib.suppress(OSError):  # a full disk must not hide why the pull stopped
                self._save(self.ranges)
            os.close(fd)
        if self.errors:
            raise self.errors[0]
        if any(r[2] < r[1] - r[0] + 1 for r in self.ranges):
            raise DownloadError(f"the download of {self.name.short} stopped short",
                                hint="run the pull again: it resumes where it stopped")
        if self.progress:
            self.progress("downloading", self.done_bytes(), self.layer.size)
        return self._verify()

    def _verify(self) -> Path:
        if self.progress:
            self.progress(f"verifying sha256 digest of the {self.layer.kind} layer", None, None)
        got = sha256_file(self.part)
        if got != self.layer.sha256:
            self.discard()
            raise IntegrityError(
                f"{self.name.short}: the {self.layer.kind} layer has SHA-256 {got}, expected {self.layer.sha256}",
                hint="the registry or a proxy sent other bytes; the partial download was deleted, nothing stored")
        self.state_path.unlink(missing_ok=True)
        return self.part

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)

    def _part_loop(self, fd: int, i: int) -> None:
        failures = 0
        while not self.stop.is_set():
            r = self.ranges[i]
            if r[2] >= r[1] - r[0] + 1:
                return
            before = r[2]
            try:
                self._fetch_part(fd, i)
                failures = 0 if r[2] > before else failures + 1
            except DownloadError as exc:
                failures = 0 if r[2] > before else failures + 1
                if failures >= self.attempts:
                    self.errors.append(exc)
                    return
                with self.lock:
                    self.url = None  # a signed CDN URL may have expired: ask the registry again
                time.sleep(min(0.2 * failures, 2.0))
            except Exception as exc:  # a refusal (404, Range ignored, a disk error): no point in retrying
                self.errors.append(exc)
                self.stop.set()
                return

    def _fetch_part(self, fd: int, i: int) -> None:
        start, end, done = self.ranges[i]
        offset = start + done
        url = self.url or blob_url(self.name, self.layer)
        resp = _open(url, self.name, {"Range": f"bytes={offset}-{end}"}, timeout=self.stall)
        with resp:
            if resp.status == 200 and offset != 0:
                raise IntegrityError(f"{resp.url.split('?')[0]} ignored a Range request for {self.name.short}",
                                     hint="the server cannot resume; run the pull again with DX_PULL_PARTS=1")
            with self.lock:
                self.url = resp.url
            want = end - offset + 1
            while want > 0 and not self.stop.is_set():
                try:
                    block = resp.read(min(_BLOCK, want))
                except (OSError, http.client.HTTPException) as exc:
                    raise _net_error(self.name, exc) from None
                if not block:
                    raise DownloadError(f"the connection for {self.name.short} closed early")
                os.pwrite(fd, block, offset)
                offset += len(block)
                want -= len(block)
                with self.lock:
                    self.ranges[i][2] += len(block)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # EFBIG: a file-size limit (RLIMIT_FSIZE)


def download_blob(name: RegistryName, layer: Layer, dest: Path, *, progress: Progress | None = None,
                  parts: int | None = None, attempts: int = 5) -> Path:
    """``layer`` of ``name`` as a verified file in ``dest`` (resumed if an earlier pull left a partial).

    The returned path is the caller's to move or delete. Raises IntegrityError
    (partial deleted) on a digest mismatch, DownloadError (partial kept) when
    the registry cannot be reached after ``attempts`` tries per part.
    """
    import fcntl

    dest.mkdir(parents=True, exist_ok=True)
    lock_path = dest / f"sha256-{layer.sha256}.lock"
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DownloadError(f"another pull is downloading the {layer.kind} layer of {name.short} right now",
                                hint="wait for it to finish, then run the pull again") from None
        try:
            job = _Download(name, layer, dest, parts or default_parts(), progress, attempts)
            got = job.run()
            lock_path.unlink(missing_ok=True)  # done (while still held): no empty lock file per pulled blob
            return got
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise
            raise DiskFullError(f"the disk filled up while the {layer.kind} layer of {name.short} was downloaded",
                                hint="free disk space, then run the pull again: it resumes where it stopped") from None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True)
class ModelInfo:
    """What the small layers say about a model: Ollama's defaults, system prompt, template, licenses, messages."""

    params: dict[str, object]
    system: str | None
    template: str | None        # a Go template (Ollama's); DX uses the GGUF's own Jinja template
    licenses: tuple[str, ...]
    messages: tuple[dict[str, str], ...] = ()  # MESSAGEs (Ollama's messages layer), before every chat's own

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"params": self.params, "system": self.system, "template": self.template,
                                  "licenses": list(self.licenses)}
        if self.messages:
            doc["messages"] = [dict(m) for m in self.messages]
        return doc


def read_info(name: RegistryName, manifest: Manifest, read: Callable[[Layer], bytes]) -> ModelInfo:
    """Parse the small layers; ``read`` returns a layer's bytes already checked against its digest."""
    params: dict[str, object] = {}
    for layer in manifest.of_kind("params"):
        try:
            doc = json.loads(read(layer))
        except ValueError as e:
            raise MalformedInputError(f"{name.short}: the params layer is not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise MalformedInputError(f"{name.short}: the params layer is not a JSON object")
        params.update(doc)

    def text(kind: str) -> str | None:
        layers = manifest.of_kind(kind)
        return read(layers[-1]).decode("utf-8", errors="replace") if layers else None

    licenses = tuple(read(ly).decode("utf-8", errors="replace") for ly in manifest.of_kind("license"))
    messages: list[dict[str, str]] = []
    for layer in manifest.of_kind("messages")[-1:]:  # Ollama's create keeps one (the last set)
        messages = _messages(name, read(layer))
    return ModelInfo(params, text("system"), text("template"), licenses, tuple(messages))


def _messages(name: RegistryName, raw: bytes) -> list[dict[str, str]]:
    """A messages layer: Ollama's ``[{"role", "content", …}]`` (JSON); only role and content are kept."""
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise MalformedInputError(f"{name.short}: the messages layer is not JSON: {e}") from None
    if not isinstance(doc, list) or not all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content", ""), str) for m in doc):
        raise MalformedInputError(f"{name.short}: the messages layer is not a list of "
                                  '{"role": "system"|"user"|"assistant", "content"}')
    return [{"role": m["role"], "content": m.get("content") or ""} for m in doc]


def sweep(dest: Path, keep_days: float = 7.0) -> None:
    """Partial blobs nobody resumed for ``keep_days`` go, with their state files."""
    cutoff = time.time() - keep_days * 86400
    for p in list(dest.glob("sha256-*.partial")) if dest.is_dir() else []:
        with contextlib.suppress(OSError):
            if p.stat().st_mtime < cutoff:
                p.unlink()
                p.with_suffix(".state.json").unlink(missing_ok=True)
                p.with_suffix(".lock").unlink(missing_ok=True)
