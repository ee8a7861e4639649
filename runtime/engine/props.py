"""What an engine's chat template can do, from llama-server's ``GET /props`` (asked once per engine).

The server needs to know whether the model's template renders ``tools`` and parses tool calls
itself (``chat_template_caps``): llama-server silently drops ``tools`` for a template without
tool support, so DX then uses its own generic tool-call format (``dx.server.tool_calls``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from dx.engine.relay import engine_json
from dx.errors import EngineUnavailable

if TYPE_CHECKING:
    from dx.engine.process import Engine

_CACHE_MAX = 64
_lock = threading.Lock()
_caps: dict[tuple[int, int, float], dict[str, bool]] = {}


def template_caps(engine: Engine) -> dict[str, bool]:
    """The engine's ``chat_template_caps`` (``supports_tools``, ``supports_tool_calls``, ...); {} if unknown.

    Cached per engine process: a template does not change while an engine runs. An engine that
    cannot answer is not cached (the request that follows gets the engine's own error).
    """
    key = (engine.port, engine.pid, engine.started_at)
    with _lock:
        if key in _caps:
            return _caps[key]
    try:
        status, doc = engine_json(engine, "/props", timeout=10.0)
    except EngineUnavailable:
        return {}
    raw = doc.get("chat_template_caps") if status == 200 else None
    if not isinstance(raw, dict):
        return {}
    caps = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, bool)}
    with _lock:
        if len(_caps) >= _CACHE_MAX:
            _caps.clear()
        _caps[key] = caps
    return caps


def renders_tools(engine: Engine) -> bool:
    """True when the template describes tools to the model and the engine parses its calls."""
    caps = template_caps(engine)
    return bool(caps.get("supports_tools") and caps.get("supports_tool_calls"))
