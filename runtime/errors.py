"""One class per failure the runtime answers, each carrying its HTTP status.

The transport turns any of these into an answer by ``exc.http_status`` and
``exc.error_type`` (the OpenAI error ``type``), never by the class's name; the
DXError subclasses keep their CLI exit codes from ``dxverify.errors``. This module
is at the bottom of the runtime's layers: it imports nothing of ``dx``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from dxverify.errors import ConfigurationError, DXError

__all__ = [
    "BadRequest", "DXError", "DiskFullError", "DownloadError", "EngineError", "EngineUnavailable", "EngineUnreachable",
    "InvalidJSON", "InvalidModelNameError", "ModelConflictError", "ModelNotFoundError", "ReadOnlyModelError",
    "client_text", "http_answer",
]


class BadRequest(ValueError):
    """The request does not match Ollama's API (answered 400 with {"error": ...})."""

    http_status = 400
    error_type = "invalid_request_error"


class InvalidJSON(BadRequest):
    """The body is not strict JSON (answered 400 by either API)."""


class InvalidModelNameError(ConfigurationError, BadRequest):
    """Not a model name (``../../x``, ``/etc/passwd``, empty, overlong, a NUL...)."""

    http_status = 400
    error_type = "invalid_request_error"


class ModelNotFoundError(ConfigurationError, LookupError):
    """No model by that name: not in a request's resolver, not in the store (404 in either API; `dx` exits 2)."""

    http_status = 404
    error_type = "not_found_error"


class ReadOnlyModelError(ConfigurationError):
    """The model belongs to Ollama; DX lists and serves it but never changes it (403)."""

    http_status = 403
    error_type = "server_error"


class ModelConflictError(ConfigurationError):
    """The name is the model this server was started with: it cannot be deleted or overwritten while served (409)."""

    http_status = 409
    error_type = "conflict_error"


class DownloadError(DXError):
    """A registry (Ollama's, the Hugging Face Hub, a mirror) could not be reached or answered with an error.

    502 on the wire: the server is fine, the upstream it pulls from is not; `dx` exits 7
    (the machine lacks the network), as for any other EnvironmentProblem.
    """

    exit_code = 7
    http_status = 502
    error_type = "server_error"


class DiskFullError(DXError):
    """The store's disk filled up (or a file-size limit was hit) while DX wrote to it: 507, as a blob upload's.

    What a pull had downloaded is kept, so the same pull resumes once space is freed.
    """

    exit_code = 7
    http_status = 507
    error_type = "server_error"


class EngineError(Exception):
    """The engine could not answer (503 while it restarts, 500 when a model cannot load)."""

    error_type = "server_error"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def http_status(self) -> int:  # type: ignore[override]
        return self.status


class EngineUnavailable(Exception):
    """The engine went away (crashed, was killed) while serving this request."""

    http_status = 503
    error_type = "server_error"


class EngineUnreachable(EngineUnavailable):
    """The engine refused the connection: the request never reached it (safe to retry)."""


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/[^\s'\"`()<>,;]+")


def client_text(text: str, names: dict[str, str] | None = None, roots: Iterable[str] = ()) -> str:
    """``text`` as a client may see it: no server filesystem path.

    ``names`` maps a path to what it stands for (a model's file -> the model's name),
    ``roots`` are folders nothing under which may show (DX_HOME, HOME); any other
    absolute path left is cut to ``…``. The server's own log keeps the full text.
    """
    for path, name in sorted((names or {}).items(), key=lambda kv: -len(kv[0])):
        if path:
            text = text.replace(path, name)
    for root in sorted((r for r in roots if r and r != "/"), key=len, reverse=True):
        text = re.sub(re.escape(root.rstrip("/")) + r"[^\s'\"`()<>,;]*", "…", text)
    return _ABSOLUTE_PATH.sub("…", text)


def http_answer(exc: BaseException) -> tuple[int, str] | None:
    """(HTTP status, OpenAI error type) for a failure the API answers, None for a bug or a lost client.

    Every class above carries its own status; any other DXError is a 500 with the
    server's error type (its message is the one line the CLI would print).
    """
    status = getattr(exc, "http_status", None)
    if isinstance(status, int):
        return status, getattr(exc, "error_type", "server_error")
    if isinstance(exc, DXError):
        return 500, "server_error"
    return None
