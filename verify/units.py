"""The short human forms DX prints for model sizes: the one parameter-count formatter.

It sits at the bottom (dxverify) so that ``dx inspect``'s report, the store's manifests and
Ollama's ``details.parameter_size`` on ``/api/tags`` and ``/api/show`` all say the same thing.
"""

from __future__ import annotations


def parameter_size(n: int) -> str:
    """Ollama's short form: at most three significant digits, one decimal below 100 (135M, 3.2B, 70.6B)."""
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            v = n / div
            return f"{v:.0f}{unit}" if round(v, 1) >= 100 else f"{v:.1f}{unit}"
    return str(n)
