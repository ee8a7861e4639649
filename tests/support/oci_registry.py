"""A REAL OCI registry on loopback: Debian's ``docker-registry`` (the CNCF distribution registry, 2.8).

``./test.sh`` installs the package (as root); elsewhere the tests that need it skip or fail as
``support.tools`` says. ``start_registry(tmp)`` runs ``docker-registry serve CONFIG`` on a free
loopback port with its storage in ``tmp`` (no auth, plain HTTP), waits for ``GET /v2/`` to answer
200 and returns an ``OCIRegistry``; the session fixture ``oci_registry`` (tests/conftest.py) stops it
after the run. Its request log (one JSON line per request) is kept, so a test can see which
requests a client made (HEAD before upload, a mount, no second upload of a blob).

``put_model`` publishes a model the way Ollama's registry holds one (manifest, config and layers in
Ollama's media types) with plain monolithic uploads written here, not DX's push: the pull tests
then do not depend on the code the push tests check.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from dxverify.hashing import sha256_file
from support.tools import need

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"


def media(kind: str) -> str:
    return f"application/vnd.ollama.image.{kind}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OCIRegistry:
    """The running registry: ``host`` (``127.0.0.1:PORT``), ``url`` (``http://…``), its log and storage."""

    host: str
    root: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    published: dict[tuple[str, str], bytes] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # ---- plain HTTP, nothing of DX ----------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | Path | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, timeout=120, blocksize=1 << 20)
        h = dict(headers or {})
        try:
            if isinstance(body, Path):
                h["Content-Length"] = str(body.stat().st_size)
                with open(body, "rb") as f:
                    conn.request(method, path, body=f, headers=h)
                    resp = conn.getresponse()
            else:
                conn.request(method, path, body=body, headers=h)
                resp = conn.getresponse()
            data = resp.read() if method != "HEAD" else b""
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def put_blob(self, repository: str, data: bytes | Path) -> dict[str, object]:
        """Monolithic upload (POST, then PUT ?digest= with the bytes); the descriptor of the blob."""
        if isinstance(data, Path):
            hexd, size = sha256_file(data), data.stat().st_size
        else:
            hexd, size = hashlib.sha256(data).hexdigest(), len(data)
        status, headers, _ = self.request("POST", f"/v2/{repository}/blobs/uploads/")
        assert status == 202, status
        loc = urllib.parse.urlsplit(urllib.parse.urljoin(self.url, headers["location"]))
        query = urllib.parse.urlencode([*urllib.parse.parse_qsl(loc.query), ("digest", f"sha256:{hexd}")])
        status, _, body = self.request("PUT", f"{loc.path}?{query}", data,
                                       {"Content-Type": "application/octet-stream"})
        assert status == 201, (status, body)
        return {"digest": f"sha256:{hexd}", "size": size}

    def put_model(self, repository: str, tag: str, model: Path, *, params: dict | None = None,
                  template: str | None = None, system: str | None = None,
                  licenses: tuple[str, ...] = ()) -> bytes:
        """Publish a model as Ollama's registry holds one; returns the manifest's bytes."""
        layers = [{"mediaType": media("model"), **self.put_blob(repository, model)}]
        if template is not None:
            layers.append({"mediaType": media("template"), **self.put_blob(repository, template.encode())})
        if system is not None:
            layers.append({"mediaType": media("system"), **self.put_blob(repository, system.encode())})
        for text in licenses:
            layers.append({"mediaType": media("license"), **self.put_blob(repository, text.encode())})
        if params is not None:
            layers.append({"mediaType": media("params"), **self.put_blob(repository, json.dumps(params).encode())})
        config = {"model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
                  "rootfs": {"type": "layers", "diff_ids": [ly["digest"] for ly in layers]}}
        doc = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
               "config": {"mediaType": CONFIG_TYPE, **self.put_blob(repository, json.dumps(config).encode())},
               "layers": layers}
        raw = json.dumps(doc, separators=(",", ":")).encode()
        status, _, body = self.request("PUT", f"/v2/{repository}/manifests/{tag}", raw,
                                       {"Content-Type": MANIFEST_TYPE})
        assert status == 201, (status, body)
        self.published[(repository, tag)] = raw
        return raw

    def manifest(self, repository: str, reference: str) -> tuple[bytes, str]:
        """The stored manifest's bytes and the digest the registry gives it."""
        status, headers, body = self.request("GET", f"/v2/{repository}/manifests/{reference}",
                                             headers={"Accept": MANIFEST_TYPE})
        assert status == 200, (status, body)
        return body, headers.get("docker-content-digest", "")

    def blob(self, repository: str, digest: str) -> bytes:
        status, _, body = self.request("GET", f"/v2/{repository}/blobs/{digest}")
        assert status == 200, status
        return body

    def has_blob(self, repository: str, digest: str) -> bool:
        return self.request("HEAD", f"/v2/{repository}/blobs/{digest}")[0] == 200

    # ---- what clients asked ------------------------------------------------------------------

    def log_mark(self) -> int:
        return len(self.requests())

    def requests(self, since: int = 0) -> list[tuple[str, str]]:
        """(method, uri) of every request the registry finished, in order (its access log)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("msg") == "response completed" and "http.request.method" in doc:
                out.append((doc["http.request.method"], doc.get("http.request.uri", "")))
        return out[since:]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


_CONFIG = """version: 0.1
log:
  level: info
  formatter: json
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: {host}
"""


_SILLY_AUTH = """auth:
  silly:
    realm: http://127.0.0.1:1/token
    service: dx-test
"""


def start_registry(tmp: Path, *, auth: bool = False) -> OCIRegistry:
    """``docker-registry serve`` on a free loopback port, storage and log under ``tmp``; ready when /v2/ answers.

    ``auth``: the distribution registry's own "silly" access controller, which answers 401 with a
    ``WWW-Authenticate: Bearer`` challenge to every request without an ``Authorization`` header
    (a registry that refuses an anonymous client, as a private one does)."""
    exe = need("docker-registry", package="docker-registry")
    tmp.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):  # another process may take the free port before the registry binds it
        host = f"127.0.0.1:{_free_port()}"
        reg = OCIRegistry(host, tmp / "storage", tmp / "registry.log")
        config = tmp / "config.yml"
        config.write_text(_CONFIG.format(root=reg.root, host=host) + (_SILLY_AUTH if auth else ""))
        with open(reg.log_path, "ab") as log:
            reg.proc = subprocess.Popen([exe, "serve", str(config)], stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and reg.proc.poll() is None:
            try:
                if reg.request("GET", "/v2/")[0] == (401 if auth else 200):
                    return reg
            except OSError:
                pass
            time.sleep(0.1)
        reg.stop()
    raise RuntimeError(f"docker-registry did not answer on /v2/: {reg.log_path.read_text()[-2000:]}")
