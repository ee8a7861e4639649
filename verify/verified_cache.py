"""Remember that a file was fully hashed, so the runtime pays for SHA-256 once per model.

A hit needs the same (real path, size, mtime_ns, inode, offset, length): any
rewrite of the file changes size, mtime or inode and forces a fresh hash. The
structure check still runs at every start; only the full hash is skipped. The
record lives in one small JSON file under a cache dir, written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

FILE_NAME = "verified.json"
FORMAT = 1
MAX_ENTRIES = 256


def _key(path: str | os.PathLike[str], offset: int, length: int | None) -> str | None:
    try:
        real = os.path.realpath(os.fspath(path))
        st = os.stat(real)
    except OSError:
        return None
    n = st.st_size - offset if length is None else length
    return f"{real}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{offset}|{n}"


def _load(cache_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((cache_dir / FILE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or not isinstance(data.get("entries"), dict)
    ):
        return {}
    return data["entries"]


def lookup(
    cache_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    offset: int = 0,
    length: int | None = None,
) -> str | None:
    """The SHA-256 recorded for this exact file state, or None (a damaged record counts as none)."""
    key = _key(path, offset, length)
    if key is None:
        return None
    entry = _load(Path(cache_dir)).get(key)
    if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    return None


def remember(
    cache_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    sha256: str,
    offset: int = 0,
    length: int | None = None,
) -> None:
    """Record a successful full verification; keeps the newest MAX_ENTRIES records."""
    key = _key(path, offset, length)
    if key is None:
        return
    d = Path(cache_dir)
    d.mkdir(parents=True, exist_ok=True)
    entries = _load(d)
    real = key.split("|", 1)[0]
    # A file has one current state: drop records of its older states.
    entries = {k: v for k, v in entries.items() if k.split("|", 1)[0] != real}
    entries[key] = {"sha256": sha256, "verified_at": int(time.time())}
    if len(entries) > MAX_ENTRIES:
        newest = sorted(
            entries.items(), key=lambda kv: kv[1].get("verified_at", 0) if isinstance(kv[1], dict) else 0
        )
        entries = dict(newest[-MAX_ENTRIES:])
    fd, tmp = tempfile.mkstemp(prefix=".verified-", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"format": FORMAT, "entries": entries}, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, d / FILE_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
