"""Write a file whole or not at all: a temporary sibling, then a rename.

Every file DX leaves for a user or a later step (keys, signatures, manifests,
reports, rendered scripts) goes through here, so an interrupted run never leaves
a half-written one. The temporary file is created with its final mode, so a
private key is never readable by others, not even for a moment.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_bytes_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)  # umask may have narrowed it, or O_CREAT kept an old file's mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), mode)
