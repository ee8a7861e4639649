"""The append-only audit log of tool calls: one JSON line per call the model made.

``$DX_HOME/logs/tools.jsonl`` (``dx.config.tools_log_path``), one line each, e.g.

    {"time": "2026-12-07T11:40:02.113Z", "key": "3f9a0c1b2d4e", "model": "smollm2", "server": "time",
     "tool": "get_current_time", "arguments_sha256": "9c1e...", "decision": "executed",
     "duration_ms": 41.7, "result_bytes": 118}

``decision``: executed (DX ran it; ``error``/``timeout`` when the run failed), returned (handed to
the API client, not run by DX), denied (the policy), refused (the person said no), invalid (the
arguments failed the tool's schema). The arguments themselves are never written, only their hash:
the log proves which call ran without keeping what may be private. Each line is written with one
``write`` on a file opened for append, so lines of concurrent requests never interleave.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dx import config, metrics

EXECUTED, RETURNED, DENIED, REFUSED, INVALID, ERROR, TIMEOUT = (
    "executed", "returned", "denied", "refused", "invalid", "error", "timeout")
_lock = threading.Lock()


@dataclass(frozen=True)
class Entry:
    time: str
    key: str
    model: str
    server: str
    tool: str
    arguments_sha256: str
    decision: str
    duration_ms: float
    result_bytes: int


def arguments_hash(arguments: str) -> str:
    """SHA-256 of the arguments exactly as the model sent them (JSON text)."""
    return hashlib.sha256(arguments.encode("utf-8", "surrogatepass")).hexdigest()


def key_id(api_key: str | None) -> str:
    """A key's short id for the log (never the key): the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12] if api_key else "none"


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def record(*, key: str, model: str, server: str, tool: str, arguments: str, decision: str,
           duration_s: float = 0.0, result_bytes: int = 0, path: Path | None = None) -> Entry:
    """Append one line and count it in /metrics (``dx_tool_calls_total``)."""
    entry = Entry(_now(), key, model, server, tool, arguments_hash(arguments), decision,
                  round(duration_s * 1000, 1), result_bytes)
    metrics.TOOL_CALLS.inc(server, tool, decision)
    if decision in (EXECUTED, ERROR, TIMEOUT):
        metrics.TOOL_SECONDS.observe(duration_s, server)
    target = path or config.tools_log_path()
    line = (json.dumps(asdict(entry), ensure_ascii=False, separators=(", ", ": ")) + "\n").encode()
    with _lock:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    return entry
