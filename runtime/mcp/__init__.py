"""DX Connect: the Model Context Protocol in DX's own small JSON-RPC 2.0 core (stdlib only; the ``mcp``
SDK is the tests' other end, not a dependency of the executable: its server side loads ~25 MB and ~0.7 s).

``rpc`` is the core both ends share (messages, errors, stdio framing); ``server`` makes the served model an
MCP server (``dx mcp``, ``/mcp``). As a host: ``config`` reads an ``mcpServers`` file and its ``policy``
block, ``client`` speaks to one MCP server (stdio or streamable HTTP), ``schema`` checks a call's
arguments, ``policy`` decides who may run a call, ``audit`` records every call, ``toolbox`` puts them
together for ``dx serve --mcp`` and ``dx run --mcp``. The layer sits just below ``dx.server``.
"""
