"""Hugging Face Hub downloads with the standard library: ``dx pull`` in a dx executable.

A minted or installed ``dx`` executable leaves huggingface_hub (with httpx, its
TLS stack and its CLI) out to stay small (dxbuild.bundle.nuitka.NOFOLLOW), so there
``dx pull hf:…`` speaks the Hub's public file protocol itself:

* ``HEAD {endpoint}/{repo}/resolve/{revision}/{file}`` (redirects not followed)
  gives the file's size and, for an LFS file, its SHA-256 (``X-Linked-Etag`` or
  ``ETag``);
* ``GET`` of the same URL, following redirects, with ``Range: bytes=N-`` when
  part of the file is already here.

Bytes go to ``<downloads>/<key>.partial``, where the key names the file and its
ETag. A pull that is interrupted — Ctrl-C, a kill, a dropped connection — leaves
that file, and the next pull of the same file asks only for the rest
(``If-Range`` makes the server send the whole file again if it changed). The
partial is renamed to ``<key>.complete`` when every byte is in; the caller then
verifies and imports it. HF_ENDPOINT, HF_TOKEN (or the token file ``hf auth
login`` writes) are honoured like huggingface_hub does.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dx import __version__
from dx.errors import DownloadError, ModelNotFoundError
from dx.names import HFFile
from dxverify.errors import DXError

DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT = 60.0
_BLOCK = 1 << 20

Progress = Callable[[str, "int | None", "int | None"], None]


@dataclass(frozen=True)
class Remote:
    size: int | None
    etag: str | None  # for an LFS file: its SHA-256
    commit: str | None


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or DEFAULT_ENDPOINT


def url(hf: HFFile) -> str:
    return "/".join((
        endpoint(), hf.repo_id, "resolve", urllib.parse.quote(hf.revision, safe=""),
        urllib.parse.quote(hf.filename),
    ))


def _token() -> str | None:
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"].strip()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    try:
        return Path(home, "token").read_text().strip() or None
    except OSError:
        return None


def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    h = {"User-Agent": f"dx/{__version__}", "Accept-Encoding": "identity"}
    token = _token()
    if token:
        h["Authorization"] = f"Bearer {token}"
    h.update(extra or {})
    return h


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None  # a 3xx answer is read as is (its X-Linked-* headers describe the file)


def _error(hf: HFFile, exc: BaseException) -> DXError:
    where = endpoint()
    if isinstance(exc, urllib.error.HTTPError):
        code = exc.code
        if code == 404:
            return ModelNotFoundError(f"{hf.filename} not found in {hf.repo_id} (revision {hf.revision}) at {where}",
                                      hint="check OWNER/REPO and the file name")
        if code in (401, 403):
            return DownloadError(f"{where} refused {hf} (HTTP {code})", hint="a gated or private repo needs HF_TOKEN")
        return DownloadError(f"{where} answered HTTP {code} for {hf}",
                             hint="run the pull again later; what was downloaded so far is kept")
    reason = getattr(exc, "reason", None) or exc.__class__.__name__
    return DownloadError(f"downloading {hf} from {where} failed: {reason}",
                         hint="check the network or HF_ENDPOINT; run the pull again to resume")


def head(hf: HFFile) -> Remote:
    """Size, ETag and commit of ``hf`` as the Hub describes it."""
    opener = urllib.request.build_opener(_NoRedirect)
    req = urllib.request.Request(url(hf), method="HEAD", headers=_headers())
    try:
        with opener.open(req, timeout=TIMEOUT) as resp:
            headers = resp.headers
    except urllib.error.HTTPError as exc:
        if exc.code not in (301, 302, 303, 307, 308):
            raise _error(hf, exc) from None
        headers = exc.headers
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _error(hf, exc) from None
    etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").strip().removeprefix("W/").strip('"')
    size = headers.get("X-Linked-Size") or headers.get("Content-Length")
    return Remote(
        size=int(size) if size and size.isdigit() else None,
        etag=etag.lower() or None,
        commit=headers.get("X-Repo-Commit"),
    )


def _key(hf: HFFile, remote: Remote) -> str:
    return hashlib.sha256(f"{hf}\0{remote.etag or ''}".encode()).hexdigest()[:32]


def download(hf: HFFile, remote: Remote, dest: Path, progress: Progress | None = None,
             attempts: int = 5) -> Path:
    """Fetch ``hf`` into ``dest``, resuming a partial download of the same file; return the complete file.

    A connection that drops is resumed with a Range request, up to ``attempts``
    times in this call; what arrived stays in the partial file for the next pull.
    """
    dest.mkdir(parents=True, exist_ok=True)
    key = _key(hf, remote)
    part, done = dest / f"{key}.partial", dest / f"{key}.complete"
    if done.is_file() and (remote.size is None or done.stat().st_size == remote.size):
        return done
    for attempt in range(1, attempts + 1):
        try:
            if _fetch_into(hf, remote, part, progress):
                os.replace(part, done)
                return done
        except DownloadError:
            if attempt == attempts:
                raise
        time.sleep(min(0.2 * attempt, 2.0))
    raise DownloadError(f"the download of {hf} kept stopping short",
                        hint="run the pull again: it resumes where it stopped")


def _fetch_into(hf: HFFile, remote: Remote, part: Path, progress: Progress | None) -> bool:
    """One GET into ``part`` (resumed when it has bytes); True when the file is complete."""
    have = part.stat().st_size if part.is_file() else 0
    if remote.size is not None and have > remote.size:
        part.unlink()
        have = 0
    if remote.size is not None and have == remote.size:
        return True
    extra = {}
    if have:
        extra["Range"] = f"bytes={have}-"
        if remote.etag:
            extra["If-Range"] = f'"{remote.etag}"'
    req = urllib.request.Request(url(hf), headers=_headers(extra))
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        raise _error(hf, exc) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _error(hf, exc) from None
    with resp:
        if resp.status != 206:  # the whole file (the server ignored Range, or the file changed)
            have = 0
        total = remote.size
        if total is None:
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
        if have and progress:
            progress(f"resuming at {have} bytes", have, total)
        got, last = have, 0.0
        with open(part, "ab" if have else "wb") as out:
            try:
                while block := resp.read(_BLOCK):
                    out.write(block)
                    got += len(block)
                    now = time.monotonic()
                    if progress and now - last >= 0.1:
                        last = now
                        progress("downloading", got, total)
            except http.client.IncompleteRead as exc:
                out.write(exc.partial)
                raise _error(hf, exc) from None
            except (OSError, http.client.HTTPException) as exc:
                raise _error(hf, exc) from None
    if progress:
        progress("downloading", got, total)
    return total is None or got == total


def fetch_small(hf: HFFile, limit: int = 1 << 16) -> bytes | None:
    """A small file of the repository (a ``.sha256`` sidecar); None when it does not exist."""
    req = urllib.request.Request(url(hf), headers=_headers())
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.read(limit)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise _error(hf, exc) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _error(hf, exc) from None


def sweep(dest: Path, keep_days: float = 7.0) -> None:
    """Partial downloads nobody resumed for ``keep_days`` go."""
    cutoff = time.time() - keep_days * 86400
    for p in dest.glob("*.partial"):
        try:
            if p.stat().st_mtime < cutoff:
                p.unlink()
        except OSError:
            pass


def cached_snapshot(cache: Path, hf: HFFile) -> Path | None:
    """``hf`` in a Hugging Face cache folder (``models--OWNER--REPO/snapshots/REV/FILE``), if there."""
    repo = cache / ("models--" + hf.repo_id.replace("/", "--"))
    rev = hf.revision
    ref = repo / "refs" / rev
    if ref.is_file():
        rev = ref.read_text().strip()
    path = repo / "snapshots" / rev / hf.filename
    return path if path.is_file() else None
