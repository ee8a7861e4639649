"""The dx HTTP server: Ollama and OpenAI APIs in front of supervised engines.

This module is the front door callers import (``dx serve``, tests); the parts
live apart, as llama.cpp splits server-http.cpp from server.cpp:

* ``dx.transport`` — connections, limits, deadlines, auth, errors in each API's shape;
* ``dx.routes`` — the one route table (method, path, handler, public or not);
* ``dx.ollama_routes`` / ``dx.openai_routes`` — what each API's routes do;
* ``dx.engine_access`` — from a model name to a leased engine.
"""

from __future__ import annotations

from dx.engine_access import EngineError, ModelNotFound, ModelResolver
from dx.transport import App, DXHTTPServer, Handler, HTTPError, ServerLimits
from dx.transport import make_server as _bind

__all__ = [
    "App", "DXHTTPServer", "EngineError", "HTTPError", "Handler", "ModelNotFound", "ModelResolver",
    "ServerLimits", "make_server",
]


def make_server(host: str, port: int, app: App) -> DXHTTPServer:
    """Bind the server with DX's route table (raises ConfigurationError when the address is taken)."""
    from dx.routes import resolve

    return _bind(host, port, app, resolve)
