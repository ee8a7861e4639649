"""The MCP servers of one ``mcp.json``, connected, with their tools under the operator's policy.

``Toolbox.open`` starts every server, lists its tools and names each for the model
(``server__tool``: OpenAI's function-name alphabet has no dot, and the prefix keeps two servers'
tools of one name apart). ``run`` is the one way a call reaches a server: the arguments are
parsed and checked against the tool's schema first (an invalid call never runs), the call gets
the per-call deadline and the size cap, and the outcome is written to the audit log whatever it is.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dx.mcp import audit, policy, schema
from dx.mcp.client import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT, Client, McpError, Tool, result_text
from dx.mcp.config import McpConfig
from dxverify.errors import ConfigurationError

MODEL_TEXT_CAP = 16_000  # characters of one result the model reads (the rest is cut, and it is told)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Bound:
    """A tool as the model sees it: its exposed name, its server's tool, the policy's decision."""

    exposed: str
    tool: Tool
    decision: str

    @property
    def key(self) -> str:
        return f"{self.tool.server}.{self.tool.name}"


@dataclass(frozen=True)
class Outcome:
    """What one call gave: the text for the model, the audit decision, the bytes the server sent."""

    text: str
    decision: str
    result_bytes: int = 0
    is_error: bool = False


def exposed_name(server: str, tool: str) -> str:
    return _UNSAFE.sub("_", f"{server}__{tool}")[:64]


class Toolbox:
    def __init__(self, cfg: McpConfig, *, call_timeout: float = DEFAULT_TIMEOUT,
                 max_result_bytes: int = DEFAULT_MAX_BYTES, start_timeout: float = 30.0) -> None:
        self.cfg = cfg
        self.call_timeout = call_timeout
        self.max_result_bytes = max_result_bytes
        self.start_timeout = start_timeout
        self.clients: dict[str, Client] = {}
        self.tools: dict[str, Bound] = {}

    def open(self) -> Toolbox:
        """Start every server and list its tools; one that cannot start stops DX with one line."""
        try:
            for server in self.cfg.servers:
                client = Client(server, timeout=self.start_timeout, max_bytes=self.max_result_bytes)
                try:
                    client.open()
                    listed = client.list_tools()
                except McpError as exc:
                    raise ConfigurationError(f"{self.cfg.path}: mcpServers.{server.name}: {exc}") from None
                client.timeout = self.call_timeout
                self.clients[server.name] = client
                for tool in listed:
                    name = exposed_name(tool.server, tool.name)
                    if name in self.tools:  # two tools that differ only in characters outside [A-Za-z0-9_-]
                        raise ConfigurationError(
                            f"{self.cfg.path}: mcpServers.{server.name}: tools {self.tools[name].key} and "
                            f"{server.name}.{tool.name} both become {name}: rename one server")
                    self.tools[name] = Bound(name, tool, policy.decide(self.cfg.policy, tool.server, tool.name,
                                                                       read_only=tool.read_only))
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self.clients.clear()

    def offered(self, taken: Iterable[str] = ()) -> list[Bound]:
        """The tools the model is shown: all but the denied ones and those whose name the client uses."""
        skip = set(taken)
        return [b for b in self.tools.values() if b.decision != policy.DENY and b.exposed not in skip]

    def openai_tools(self, taken: Iterable[str] = ()) -> list[dict[str, Any]]:
        return [{"type": "function", "function": {
            "name": b.exposed,
            "description": (f"[{b.tool.server}] " + b.tool.description)[:1024],
            "parameters": b.tool.input_schema}} for b in self.offered(taken)]

    def run(self, bound: Bound, arguments: str, *, key: str, model: str) -> Outcome:
        """Check and run one call (the caller has decided it may run); audited whatever happens."""
        tool = bound.tool
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            args = None
        problem = "arguments: must be a JSON object" if not isinstance(args, dict) else \
            schema.validate(args, tool.input_schema)
        if problem is not None:
            audit.record(key=key, model=model, server=tool.server, tool=tool.name, arguments=arguments,
                         decision=audit.INVALID)
            return Outcome(f"error: the call was not run: {problem}", audit.INVALID, is_error=True)
        started = time.monotonic()
        decision, size, is_error = audit.EXECUTED, 0, False
        try:
            result = self.clients[tool.server].call_tool(tool.name, args)
            text = result_text(result)
            size = len(json.dumps(result, ensure_ascii=False).encode())
            is_error = result.get("isError") is True
            if is_error:
                text = f"error: {text}"
        except McpError as exc:
            decision = audit.TIMEOUT if exc.timeout else audit.ERROR
            text, is_error = f"error: {exc}", True
        audit.record(key=key, model=model, server=tool.server, tool=tool.name, arguments=arguments,
                     decision=decision, duration_s=time.monotonic() - started, result_bytes=size)
        return Outcome(cap(text), decision, size, is_error)

    def note(self, bound: Bound, arguments: str, decision: str, *, key: str, model: str) -> None:
        """A call that did not run (returned, denied, refused): audited too."""
        audit.record(key=key, model=model, server=bound.tool.server, tool=bound.tool.name,
                     arguments=arguments, decision=decision)


def cap(text: str, limit: int = MODEL_TEXT_CAP) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters cut by dx]"
