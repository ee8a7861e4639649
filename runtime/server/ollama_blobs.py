"""``HEAD /api/blobs/sha256:<hex>``: does DX have this blob? (Ollama's clients ask before they upload.)

200 when the blob is in DX's store or in Ollama's (read-only), 404 when it is in neither, 400 for a
digest that is not ``sha256:<64 hex>`` — Ollama's answers and words (server/routes.go HeadBlobHandler).
Uploading (``POST /api/blobs``, then ``/api/create``) is not served here: it is a 404 "no route".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from dx.server.wire import HTTPError

if TYPE_CHECKING:
    from dx.server.request import Handler as Request

PREFIX = "/api/blobs/"
_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


def head(req: Request) -> None:
    digest = req.path.split("?", 1)[0][len(PREFIX):]
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise HTTPError(400, "invalid digest format")
    name = f"sha256-{match.group(1).lower()}"
    store = req.app.store
    dirs: list[Path] = [store.blobs]
    if store.ollama_dir is not None:
        dirs.append(Path(store.ollama_dir) / "blobs")
    if not any((d / name).is_file() for d in dirs):
        raise HTTPError(404, f'blob "{digest[:80]}" not found', kind="not_found_error")
    req.send_response(200)
    req.send_header("Content-Length", "0")
    req.end_headers()
