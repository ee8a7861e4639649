"""DX Connect: MCP (Model Context Protocol) in DX's own small JSON-RPC core (no ``mcp`` SDK inside).

``config`` reads an ``mcpServers`` file and its ``policy`` block, ``client`` speaks to one MCP
server (stdio or streamable HTTP), ``schema`` checks a call's arguments, ``policy`` decides who
may run a call, ``audit`` records every call, ``toolbox`` puts them together for ``dx serve --mcp``
and ``dx run --mcp``. The layer sits just below ``dx.server``.
"""
