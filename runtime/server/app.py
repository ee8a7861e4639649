"""The dx HTTP server: Ollama and OpenAI APIs in front of supervised engines.

This module is the front door callers import (``dx serve``, tests); the parts
live apart, as llama.cpp splits server-http.cpp from server.cpp:

* ``dx.server.transport`` — connections, limits, deadlines, auth, errors in each API's shape;
* ``dx.server.routes`` — the one route table (method, path, handler, public or not);
* ``dx.server.ollama`` / ``dx.server.openai`` — what each API's routes do;
* ``dx.engine.lease`` — from a model name to a leased engine.
"""

from __future__ import annotations

from dx.errors import EngineError, ModelNotFound
from dx.models.catalog import ModelResolver
from dx.server.transport import App, DXServer, HTTPError, Request, ServerLimits
from dx.server.transport import make_server as _bind

DXHTTPServer = DXServer  # the name it had before the transport was split out
Handler = Request

__all__ = [
    "App", "DXHTTPServer", "DXServer", "EngineError", "HTTPError", "Handler", "ModelNotFound", "ModelResolver",
    "Request", "ServerLimits", "make_server",
]


def make_server(host: str, port: int, app: App) -> DXServer:
    """Bind the server with DX's route table (raises ConfigurationError when the address is taken)."""
    from dx.server.routes import resolve

    return _bind(host, port, app, resolve)
