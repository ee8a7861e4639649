"""An ``mcp.json``: Cursor's and Claude Desktop's ``mcpServers`` format, plus DX's ``policy`` block.

    {"mcpServers": {
        "time": {"command": "mcp-server-time", "args": ["--local-timezone", "UTC"],
                 "env": {"TOKEN": "${env:MY_TOKEN}"}, "cwd": "/srv"},
        "notes": {"url": "http://127.0.0.1:8000/mcp", "headers": {"Authorization": "Bearer ${env:NOTES_KEY}"}}},
     "policy": {"default": "ask", "readOnly": "allow",
                "tools": {"time.*": "allow", "notes.write_note": "deny"}}}

A stdio server has ``command`` (and ``args``, ``env``, ``cwd``); a streamable HTTP one has ``url``
(and ``headers``). ``${env:VAR}`` in any string is the variable's value; a missing one is an error
naming it. Every mistake is one line naming the file, the key and what to do: a config is read
once, at start, so nothing half-configured ever runs a tool.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dxverify.errors import ConfigurationError

DECISIONS = ("allow", "ask", "deny")
_ENV_REF = re.compile(r"\$\{env:([^}]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,48}$")
_TOOL_KEY = re.compile(r"^[A-Za-z0-9_-]{1,48}\.(\*|[^\s.][^\s]{0,127})$")


@dataclass(frozen=True)
class ServerConfig:
    """One entry of ``mcpServers``: how to reach it."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"


@dataclass(frozen=True)
class PolicyConfig:
    """Who decides a call: ``tools`` maps ``server.tool`` or ``server.*`` to allow / ask / deny;
    ``readOnly`` applies to tools whose annotations say ``readOnlyHint``; ``default`` to the rest."""

    tools: Mapping[str, str] = field(default_factory=dict)
    read_only: str | None = None
    default: str = "ask"


@dataclass(frozen=True)
class McpConfig:
    path: str
    servers: tuple[ServerConfig, ...]
    policy: PolicyConfig


class McpConfigError(ConfigurationError):
    """A bad ``mcp.json`` or ``--allow-tools``: one line, the file, the key, what to do."""


def expand(value: str, where: str, environ: Mapping[str, str] | None = None) -> str:
    """``${env:VAR}`` -> the variable's value; an unset one is an error naming it (never an empty string)."""
    env = os.environ if environ is None else environ

    def one(m: re.Match[str]) -> str:
        var = m.group(1)
        if not var or var not in env:
            raise McpConfigError(f"{where}: ${{env:{var}}} is not set: export {var or 'the variable'} "
                                 "or remove the reference")
        return env[var]

    return _ENV_REF.sub(one, value)


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> McpConfig:
    """Read and check an ``mcp.json``; any mistake is a one-line ``McpConfigError``."""
    p = Path(path)
    shown = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise McpConfigError(f"{shown}: no such file: give the path of an mcp.json (mcpServers)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise McpConfigError(f"{shown}: cannot be read ({type(exc).__name__}): check the file") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise McpConfigError(f"{shown}: not JSON (line {getattr(exc, 'lineno', '?')}): fix the syntax") from None
    return parse(doc, shown, environ)


def parse(doc: object, shown: str, environ: Mapping[str, str] | None = None) -> McpConfig:
    """The checked config from a parsed document (``shown`` names it in errors)."""
    if not isinstance(doc, dict):
        raise McpConfigError(f"{shown}: must be a JSON object with an \"mcpServers\" object")
    servers_doc = doc.get("mcpServers")
    if not isinstance(servers_doc, dict) or not servers_doc:
        raise McpConfigError(f"{shown}: mcpServers: must be a non-empty object of server name -> server")
    servers = tuple(_server(name, entry, shown, environ) for name, entry in servers_doc.items())
    policy = _policy(doc.get("policy"), shown, {s.name for s in servers})
    return McpConfig(shown, servers, policy)


def _server(name: str, entry: object, shown: str, environ: Mapping[str, str] | None) -> ServerConfig:
    key = f"mcpServers.{name}"
    if not _NAME.match(name):
        raise McpConfigError(f"{shown}: {key}: a server name is 1-48 letters, digits, '_' or '-': rename it")
    if not isinstance(entry, dict):
        raise McpConfigError(f"{shown}: {key}: must be an object with \"command\" (stdio) or \"url\" (HTTP)")
    has_cmd, has_url = "command" in entry, "url" in entry
    if has_cmd == has_url:
        raise McpConfigError(f"{shown}: {key}: give exactly one of \"command\" (stdio) or \"url\" (streamable HTTP)")

    def text(field_name: str, value: object) -> str:
        if not isinstance(value, str):
            raise McpConfigError(f"{shown}: {key}.{field_name}: must be a string")
        return expand(value, f"{shown}: {key}.{field_name}", environ)

    def table(field_name: str) -> dict[str, str]:
        value = entry.get(field_name, {})
        if not isinstance(value, dict):
            raise McpConfigError(f"{shown}: {key}.{field_name}: must be an object of name -> string")
        return {str(k): text(f"{field_name}.{k}", v) for k, v in value.items()}

    if has_cmd:
        command = text("command", entry["command"])
        if not command.strip():
            raise McpConfigError(f"{shown}: {key}.command: is empty: name the server's program")
        args = entry.get("args", [])
        if not isinstance(args, list):
            raise McpConfigError(f"{shown}: {key}.args: must be a list of strings")
        cwd = text("cwd", entry["cwd"]) if entry.get("cwd") is not None else None
        return ServerConfig(name, command=command, args=tuple(text(f"args[{i}]", a) for i, a in enumerate(args)),
                            env=table("env"), cwd=cwd)
    url = text("url", entry["url"])
    if not re.match(r"^https?://[^/\s]+", url):
        raise McpConfigError(f"{shown}: {key}.url: {url[:80]!r} is not an http(s) URL: give the server's "
                             "streamable HTTP endpoint (e.g. http://127.0.0.1:8000/mcp)")
    return ServerConfig(name, url=url, headers=table("headers"))


def _decision(value: object, where: str) -> str:
    if value not in DECISIONS:
        raise McpConfigError(f"{where}: {value!r} is not one of allow, ask, deny")
    return str(value)


def _policy(doc: object, shown: str, servers: set[str]) -> PolicyConfig:
    if doc is None:
        return PolicyConfig()
    if not isinstance(doc, dict):
        raise McpConfigError(f"{shown}: policy: must be an object (default, readOnly, tools)")
    unknown = set(doc) - {"default", "readOnly", "tools"}
    if unknown:
        raise McpConfigError(f"{shown}: policy.{sorted(unknown)[0]}: unknown key: use default, readOnly or tools")
    default = _decision(doc.get("default", "ask"), f"{shown}: policy.default")
    read_only = _decision(doc["readOnly"], f"{shown}: policy.readOnly") if "readOnly" in doc else None
    tools_doc = doc.get("tools", {})
    if not isinstance(tools_doc, dict):
        raise McpConfigError(f"{shown}: policy.tools: must be an object of \"server.tool\" -> allow/ask/deny")
    tools = {}
    for k, v in tools_doc.items():
        tools[check_tool_key(k, f"{shown}: policy.tools.{k}", servers)] = _decision(v, f"{shown}: policy.tools.{k}")
    return PolicyConfig(tools, read_only, default)


def check_tool_key(key: str, where: str, servers: set[str]) -> str:
    """``server.tool`` or ``server.*`` naming a configured server."""
    if not isinstance(key, str) or not _TOOL_KEY.match(key):
        raise McpConfigError(f"{where}: name a tool as server.tool (or server.* for all of a server's tools)")
    server = key.split(".", 1)[0]
    if server not in servers:
        raise McpConfigError(f"{where}: no server {server!r} in mcpServers (have: {', '.join(sorted(servers))})")
    return key


def with_allowed(cfg: McpConfig, allow: list[str], flag: str = "--allow-tools") -> McpConfig:
    """``--allow-tools server.tool,...`` on top of the file's policy (the flag wins)."""
    names = {s.name for s in cfg.servers}
    tools = dict(cfg.policy.tools)
    for key in allow:
        tools[check_tool_key(key, f"{flag} {key}", names)] = "allow"
    return McpConfig(cfg.path, cfg.servers, PolicyConfig(tools, cfg.policy.read_only, cfg.policy.default))


def parse_allow(values: tuple[str, ...] | list[str]) -> list[str]:
    """Repeated flags and comma-separated lists alike."""
    return [item for value in values for item in value.replace(",", " ").split()]


def describe(cfg: McpConfig) -> str:
    """One line for the start-up banner."""
    return ", ".join(f"{s.name} ({s.transport})" for s in cfg.servers)

