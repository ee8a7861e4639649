"""Small file surgery the tamper tests share."""

from __future__ import annotations

from pathlib import Path


def flip_byte(path: Path, at: int) -> None:
    """XOR one byte of ``path`` at ``at`` with 0x40: damage that keeps the file's size."""
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x40]))
