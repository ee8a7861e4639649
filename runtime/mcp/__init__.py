"""dx.mcp: the Model Context Protocol on DX — a JSON-RPC 2.0 core of DX's own (``rpc``) and the served
model as an MCP server (``server``). Stdlib only: the ``mcp`` SDK is the tests' other end, not a dependency
of the executable (its server side loads ~25 MB and ~0.7 s; see ``dx.mcp.rpc``)."""
