"""dx.mcp.config: an mcp.json read into servers and a policy; every bad one is one line naming file and key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dx.mcp import config
from dx.mcp.config import McpConfigError


def write(tmp_path: Path, doc: object) -> Path:
    p = tmp_path / "mcp.json"
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def test_cursor_and_claude_desktop_shapes_with_env(tmp_path: Path) -> None:
    p = write(tmp_path, {"mcpServers": {
        "time": {"command": "mcp-server-time", "args": ["--local-timezone", "${env:TZ_X}"], "env": {"A": "b"}},
        "notes": {"url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer ${env:TOKEN_X}"}}},
        "policy": {"default": "deny", "readOnly": "allow", "tools": {"time.*": "allow", "notes.write": "ask"}}})
    cfg = config.load(p, {"TZ_X": "UTC", "TOKEN_X": "s3cret"})
    time_s, notes = cfg.servers
    assert (time_s.transport, time_s.command, time_s.args, dict(time_s.env)) == (
        "stdio", "mcp-server-time", ("--local-timezone", "UTC"), {"A": "b"})
    assert (notes.transport, notes.url, dict(notes.headers)) == ("http", "http://127.0.0.1:9/mcp",
                                                                  {"Authorization": "Bearer s3cret"})
    assert cfg.policy.default == "deny" and cfg.policy.read_only == "allow"
    assert dict(cfg.policy.tools) == {"time.*": "allow", "notes.write": "ask"}


@pytest.mark.parametrize(("doc", "words"), [
    ("{not json", ["not JSON", "line 1"]),
    ([], ["JSON object", "mcpServers"]),
    ({"mcpServers": {}}, ["mcpServers", "non-empty"]),
    ({"mcpServers": {"a b": {"command": "x"}}}, ["mcpServers.a b", "rename"]),
    ({"mcpServers": {"s": "x"}}, ["mcpServers.s", "command"]),
    ({"mcpServers": {"s": {}}}, ["mcpServers.s", "exactly one"]),
    ({"mcpServers": {"s": {"command": "x", "url": "http://h/"}}}, ["mcpServers.s", "exactly one"]),
    ({"mcpServers": {"s": {"command": ""}}}, ["mcpServers.s.command", "empty"]),
    ({"mcpServers": {"s": {"command": "x", "args": "a b"}}}, ["mcpServers.s.args", "list"]),
    ({"mcpServers": {"s": {"command": "x", "args": [1]}}}, ["mcpServers.s.args[0]", "string"]),
    ({"mcpServers": {"s": {"command": "x", "env": ["A=1"]}}}, ["mcpServers.s.env", "object"]),
    ({"mcpServers": {"s": {"url": "ftp://h/x"}}}, ["mcpServers.s.url", "http"]),
    ({"mcpServers": {"s": {"url": "http://h/", "headers": {"A": 1}}}}, ["mcpServers.s.headers.A", "string"]),
    ({"mcpServers": {"s": {"command": "${env:DX_TEST_UNSET_VAR}"}}},
     ["mcpServers.s.command", "DX_TEST_UNSET_VAR", "export"]),
    ({"mcpServers": {"s": {"command": "x"}}, "policy": []}, ["policy", "object"]),
    ({"mcpServers": {"s": {"command": "x"}}, "policy": {"mode": "allow"}}, ["policy.mode", "unknown"]),
    ({"mcpServers": {"s": {"command": "x"}}, "policy": {"default": "yes"}}, ["policy.default", "allow, ask, deny"]),
    ({"mcpServers": {"s": {"command": "x"}}, "policy": {"tools": {"s.t": "maybe"}}}, ["policy.tools.s.t", "allow"]),
    ({"mcpServers": {"s": {"command": "x"}}, "policy": {"tools": {"t": "allow"}}}, ["policy.tools.t", "server.tool"]),
    ({"mcpServers": {"s": {"command": "x"}}, "policy": {"tools": {"other.t": "allow"}}},
     ["policy.tools.other.t", "no server 'other'"]),
])
def test_bad_config_is_one_line_naming_file_and_key(tmp_path: Path, doc: object, words: list[str]) -> None:
    p = write(tmp_path, doc)
    with pytest.raises(McpConfigError) as exc:
        config.load(p, {})
    text = str(exc.value)
    assert "\n" not in text and text.startswith(str(p))
    for w in words:
        assert w in text, text


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(McpConfigError, match=r"no such file"):
        config.load(tmp_path / "nope.json")


def test_allow_tools_flag_adds_and_checks(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, {"mcpServers": {"s": {"command": "x"}}, "policy": {"tools": {"s.t": "deny"}}}))
    out = config.with_allowed(cfg, config.parse_allow(("s.t,s.u", "s.*")))
    assert dict(out.policy.tools) == {"s.t": "allow", "s.u": "allow", "s.*": "allow"}
    with pytest.raises(McpConfigError, match=r"--allow-tools nope.t: no server 'nope'"):
        config.with_allowed(cfg, ["nope.t"])
    with pytest.raises(McpConfigError, match=r"--allow-tools bare: name a tool as server.tool"):
        config.with_allowed(cfg, ["bare"])
