"""What every handler shares (``App``: the engines, the catalog, the key, the web policy) and the
limits that bound what one client can make the server do (``ServerLimits``).

Built once by ``dx.server.app`` (the composition root) and read by the transport
and the handlers.
"""


from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dx.server.site import OriginPolicy

MiB = 1 << 20

if TYPE_CHECKING:
    from dx.engine.manager import EngineManager
    from dx.mcp.toolbox import Toolbox
    from dx.models.catalog import ModelResolver, Store
    from dx.server.login import Sessions


@dataclass(frozen=True)
class ServerLimits:
    """Everything that bounds what one client can make the server do.

    Memory: a connection waiting for its request buffers at most
    ``max_header_bytes`` of its head, so all of them together stay under
    ``max_connections`` x 64 KiB (64 MiB at the defaults, reached only by a
    deliberate flood; an idle socket holds no buffer, about 1 KiB in all).
    Measured (bench_idle_connections.py): 1,000 idle or slow connections +0.6 MB
    RSS; 1,000 holding 60 KB of head each 90-115 MB, back to idle once closed.
    """

    max_body: int = 32 * MiB
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0  # idle keep-alive + request line + headers
    body_timeout: float = 60.0
    io_timeout: float = 300.0  # one blocking send/recv on the client socket
    max_connections: int = 1024  # open sockets (waiting or in a request)
    max_requests: int = 128  # requests in progress = worker threads


class App:
    """What the handlers share: the engines, the catalog (and its store), the key, the limits, the web policy."""

    def __init__(
        self, manager: EngineManager, resolver: ModelResolver, api_key: str | None,
        limits: ServerLimits | None = None, access_log: bool = False,
        allowed_hosts: Iterable[str] = (), allow_origins: Iterable[str] = (),
    ) -> None:
        self.manager = manager
        self.resolver = resolver
        self.api_key = api_key
        self.limits = limits or ServerLimits()
        self.access_log = access_log
        self.allowed_hosts = tuple(allowed_hosts)
        self.origins = OriginPolicy(allow_origins)
        self.sessions: Sessions | None = None  # made when the port is known (auth on)
        self.started = time.time()
        self.mcp: Toolbox | None = None  # dx serve --mcp: the operator's MCP servers (dx.server.tool_loop)
        self.tool_rounds = 4  # tool rounds per chat before the model must answer

    @property
    def engines(self) -> EngineManager:
        """The engine supervisor (the same object as ``manager``)."""
        return self.manager

    @property
    def store(self) -> Store:
        """The model store the catalog serves from."""
        return self.resolver.store


# (method, path) -> (handler, public): the route table's lookup (dx.server.routes.resolve).
Resolve = Callable[[str, str], tuple[Callable[[Any], None], bool]]
