"""Ollama's ``keep_alive``: how long an idle model stays loaded, parsed as Ollama parses it.

Apart from the engine supervisor because the API handlers validate a request's
``keep_alive`` (400 on a bad one) before any engine is touched.
"""

from __future__ import annotations

import re

DEFAULT_KEEP_ALIVE = 300.0  # seconds, Ollama's default of 5m

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: object, default: float = DEFAULT_KEEP_ALIVE) -> float | None:
    """Ollama's ``keep_alive``: seconds as a number or a Go duration ("5m", "1h30m").

    Returns seconds, ``None`` for "forever" (negative values), ``default`` when unset.
    Raises ValueError for anything else so the API can answer 400.
    """
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a number of seconds or a duration like '5m'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        text = text.lstrip("+-")
        try:
            seconds = sign * float(text)
        except ValueError:
            pos, total = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(f"keep_alive {value!r} is not a duration like '5m' or '30s'") from None
            seconds = sign * total
    else:
        raise ValueError("keep_alive must be a number of seconds or a duration like '5m'")
    return None if seconds < 0 else seconds
