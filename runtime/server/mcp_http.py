"""``/mcp``: the served model as an MCP server over streamable HTTP (spec 2025-06-18 / 2025-11-25).

Mounted in dx serve's route table, so it stands behind everything every other route
does: the Host check (DNS rebinding: 403), the Origin check (a page from another site:
403), the API key (401), the body limits, the access log and /metrics. ``dx mcp --http``
is this server.

One POST carries one JSON-RPC message. A request is answered with one JSON object
(``application/json``: DX's tools answer once, so no SSE stream is needed); a
notification or a response is acknowledged with 202 and no body. DX keeps no session
(``dx.mcp.server`` is stateless), so no ``Mcp-Session-Id`` is issued; GET (a server-sent
stream DX never uses) and DELETE (ending a session) are 405, as the spec allows. A
``MCP-Protocol-Version`` header DX does not speak is a 400.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from dx.mcp import rpc
from dx.mcp.server import PROTOCOL_VERSIONS, MCPServer, ModelTools

if TYPE_CHECKING:
    from dx.server.context import App
    from dx.server.request import Handler as Request

_SERVERS: weakref.WeakKeyDictionary[App, MCPServer] = weakref.WeakKeyDictionary()


def _server(app: App) -> MCPServer:
    found = _SERVERS.get(app)
    if found is None:
        found = _SERVERS.setdefault(app, MCPServer(ModelTools(app.manager, app.resolver)))
    return found


def _rpc_error(req: Request, status: int, code: int, message: str) -> None:
    req.send_json(status, rpc.error(None, rpc.RPCError(code, message)))


def post(req: Request) -> None:
    version = req.headers.get("MCP-Protocol-Version")
    if version is not None and version not in PROTOCOL_VERSIONS:
        _rpc_error(req, 400, rpc.INVALID_REQUEST,
                   f"Bad Request: unsupported MCP-Protocol-Version {version[:40]!r} "
                   f"(supported: {', '.join(PROTOCOL_VERSIONS)})")
        return
    accept = req.headers.get("Accept", "")
    if accept and not any(t in accept for t in ("application/json", "text/event-stream", "*/*")):
        _rpc_error(req, 406, rpc.INVALID_REQUEST, "Not Acceptable: the client must accept application/json")
        return
    body = req.read_body()
    try:
        msg = rpc.parse(body)
    except rpc.RPCError as exc:
        req.send_json(400, rpc.error_for(exc))
        return
    answer: dict[str, Any] | None = _server(req.app).handle(msg)
    if answer is None:  # a notification or a response: accepted, nothing to say
        req.send_response(202)
        req.send_header("Content-Length", "0")
        req.end_headers()
        return
    req.send_json(200, answer)


def other(req: Request) -> None:
    """GET (a server-to-client stream) and DELETE (end a session): DX offers neither."""
    req.send_response(405)
    req.send_header("Allow", "POST")
    req.send_header("Content-Length", "0")
    req.end_headers()
