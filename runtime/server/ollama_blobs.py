"""``HEAD``/``POST /api/blobs/sha256:<hex>``: does DX have this blob, and upload one (then ``/api/create`` names it).

HEAD: 200 when the blob is in DX's store or in Ollama's (read-only), 404 when it is in neither, 400 for a
digest that is not ``sha256:<64 hex>`` — Ollama's answers and words (server/routes.go HeadBlobHandler).

POST (Ollama's CreateBlobHandler, with DX's checks): 200 when the blob is already in DX's store (the
body read and dropped, so a client that writes it all before it reads the answer sees the 200);
otherwise the body streams to a temporary file in the store while it is hashed (never held in memory),
and only a body of the announced length whose SHA-256 is the digest and whose bytes pass the strict GGUF
reader is renamed into ``blobs/`` — 201 Created. A wrong digest is 400 ``digest mismatch, expected …,
got …`` (Ollama's words), a body that is not a GGUF 400, a body that ends early 400, a body longer than
the store's free disk space 507 before a byte is written (Ollama has no such check; 507 Insufficient
Storage is HTTP's word for it), a disk that fills up mid-way 507; nothing half-written stays on any of them.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path
from typing import TYPE_CHECKING

from dx.errors import client_text
from dx.server.wire import HTTPError
from dxverify.errors import IntegrityError, MalformedInputError

if TYPE_CHECKING:
    from dx.server.request import Handler as Request

PREFIX = "/api/blobs/"
_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


def _digest(req: Request) -> tuple[str, str]:
    """(what the client sent, the hex digest) or 400 in Ollama's words."""
    digest = req.path.split("?", 1)[0][len(PREFIX):]
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise HTTPError(400, "invalid digest format")
    return digest, match.group(1).lower()


def head(req: Request) -> None:
    digest, hexdigest = _digest(req)
    name = f"sha256-{hexdigest}"
    store = req.app.store
    dirs: list[Path] = [store.blobs]
    if store.ollama_dir is not None:
        dirs.append(Path(store.ollama_dir) / "blobs")
    if not any((d / name).is_file() for d in dirs):
        raise HTTPError(404, f'blob "{digest[:80]}" not found', kind="not_found_error")
    _empty(req, 200)


def post(req: Request) -> None:
    """Upload a GGUF blob: 201 when stored, 200 when it was there already."""
    _, hexdigest = _digest(req)
    store = req.app.store
    have = store.blobs / f"sha256-{hexdigest}"
    if have.is_file():
        _drop_body(req, have)
        _empty(req, 200)
        return
    length = req.body_length
    if not length:
        raise HTTPError(400, "the upload is empty; send the GGUF file's bytes as the body")
    try:
        store.receive_blob(req.iter_body(), hexdigest, length)
    except IntegrityError as e:
        raise HTTPError(400, str(e)) from None
    except MalformedInputError as e:
        reason = client_text(str(e), roots=[str(store.root)])
        raise HTTPError(400, f"supplied file was not in GGUF format: {reason}"[:400]) from None
    except OSError as e:
        req.close_connection = True
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise HTTPError(507, "the disk filled up while the blob was stored; nothing was kept: free disk "
                                 "space under DX_HOME and upload again", kind="server_error") from None
        raise HTTPError(500, f"the blob could not be stored ({e.strerror or type(e).__name__}); nothing was kept",
                        kind="server_error") from None
    finally:
        if req.body_length:
            req.close_connection = True  # refused before (or while) the body was read: do not reuse it
    _empty(req, 201)


def _drop_body(req: Request, have: Path) -> None:
    """Read and drop the body of an upload DX already has, when it can be that blob (same length).

    Most clients write the whole body before they read the answer (aiohttp: Open WebUI's "Upload a GGUF
    model", even for a GGUF it uploaded before under another file name); an answer with the body unread
    and the connection closed under them is a failed write ("Ollama: Could not create blob"), so the body
    is read at the speed it comes and never stored. A client that asked ``Expect: 100-continue`` never
    sends it, and a body of another length cannot be the blob: neither is read, the connection closes.
    """
    length = req.body_length
    if not length:
        return
    expect = req.headers.get("Expect", "").lower() == "100-continue"
    try:
        same = length == have.stat().st_size
    except OSError:
        same = False
    if expect or not same:
        req.close_connection = True  # the body stays unread: the connection cannot carry another request
        return
    for _ in req.iter_body():
        pass


def _empty(req: Request, status: int) -> None:
    req.send_response(status)
    req.send_header("Content-Length", "0")
    req.end_headers()
