"""One class per failure the runtime answers, each carrying its HTTP status.

The transport turns any of these into an answer by ``exc.http_status`` and
``exc.error_type`` (the OpenAI error ``type``), never by the class's name; the
DXError subclasses keep their CLI exit codes from ``dxverify.errors``. This module
is at the bottom of the runtime's layers: it imports nothing of ``dx``.
"""

from __future__ import annotations

from dxverify.errors import ConfigurationError, DXError

__all__ = [
    "BadRequest", "DXError", "EngineError", "EngineUnavailable", "EngineUnreachable", "InvalidJSON",
    "InvalidModelNameError", "ModelNotFoundError", "ReadOnlyModelError", "http_answer",
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
