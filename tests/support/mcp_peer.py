"""A real MCP server for DX's host tests, written with ``fastmcp`` (not DX's code): ``python mcp_peer.py
[stdio | http PORT]``.

Every call is recorded first (one line, the tool's name, in ``$PEER_CALLS``) so a test can show a call
DX must not run never reached the server. Tools: ``echo`` (harmless, read-only), ``write_marker``
(writes ``$PEER_DIR/<name>``: the file must never appear unless the call was allowed), ``big`` (a
50 MB result), ``hang`` (never answers), ``die`` (the server exits), ``get_current_time`` (a name the
time server has too).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from fastmcp import FastMCP

peer = FastMCP("peer")


def _record(name: str) -> None:
    with open(os.environ["PEER_CALLS"], "a") as f:
        f.write(name + "\n")


@peer.tool(annotations={"readOnlyHint": True})
def echo(text: str) -> str:
    """Repeat the text."""
    _record("echo")
    return f"echo: {text}"


@peer.tool(annotations={"readOnlyHint": False, "destructiveHint": True})
def write_marker(name: str) -> str:
    """Write a marker file with this name."""
    _record("write_marker")
    Path(os.environ["PEER_DIR"], os.path.basename(name) or "marker").write_text("written\n")
    return f"wrote {name}"


@peer.tool()
def big() -> str:
    """A very large result."""
    _record("big")
    return "x" * (50 << 20)


@peer.tool()
def hang() -> str:
    """Never answers."""
    _record("hang")
    time.sleep(3600)
    return "late"


@peer.tool()
def die() -> str:
    """The server exits."""
    _record("die")
    os._exit(3)


@peer.tool(annotations={"readOnlyHint": True})
def get_current_time(timezone: str) -> str:
    """The peer's own clock (the time server has a tool of this name too)."""
    _record("get_current_time")
    return f"peer time in {timezone}"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "http":
        peer.run(transport="http", host="127.0.0.1", port=int(sys.argv[2]), show_banner=False, log_level="WARNING")
    else:
        peer.run(show_banner=False)
