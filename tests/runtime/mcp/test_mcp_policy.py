"""dx.mcp.policy (who decides), dx.mcp.schema (arguments checked before a call runs), dx.mcp.audit (the log)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dx import metrics
from dx.mcp import audit, policy, schema
from dx.mcp.config import PolicyConfig


@pytest.mark.parametrize(("rules", "tool", "read_only", "want"), [
    (PolicyConfig(), "t", False, "ask"),  # nothing said: the client (serve) or the person (run) decides
    (PolicyConfig(), "t", True, "ask"),
    (PolicyConfig(read_only="allow"), "t", True, "allow"),
    (PolicyConfig(read_only="allow"), "t", False, "ask"),
    (PolicyConfig({"s.*": "deny"}, read_only="allow"), "t", True, "deny"),  # the server's wildcard is more specific
    (PolicyConfig({"s.*": "deny", "s.t": "allow"}), "t", False, "allow"),  # the tool's own rule wins
    (PolicyConfig({"s.t": "deny"}, default="allow"), "t", False, "deny"),
    (PolicyConfig({"other.*": "allow"}), "t", False, "ask"),
    (PolicyConfig(default="deny"), "t", False, "deny"),
])
def test_decide(rules: PolicyConfig, tool: str, read_only: bool, want: str) -> None:
    assert policy.decide(rules, "s", tool, read_only=read_only) == want


TIME_SCHEMA = {"type": "object", "properties": {
    "timezone": {"type": "string", "minLength": 1},
    "unit": {"enum": ["s", "ms"]},
    "n": {"type": "integer", "minimum": 0, "maximum": 10},
    "tags": {"type": "array", "items": {"type": "string"}},
    "opt": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    "deep": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
    "required": ["timezone"], "additionalProperties": False}


@pytest.mark.parametrize(("args", "problem"), [
    ({"timezone": "UTC"}, None),
    ({"timezone": "UTC", "unit": "ms", "n": 3, "tags": ["a"], "opt": None, "deep": {"x": 1.5}}, None),
    ({"timezone": "UTC", "n": 3.0}, None),  # 3.0 is an integer in JSON Schema
    ({}, "arguments.timezone is required"),
    ({"timezone": 5}, "arguments.timezone must be a string, not an integer"),
    ({"timezone": ""}, "arguments.timezone must have at least 1 character(s)"),
    ({"timezone": "UTC", "unit": "h"}, "arguments.unit must be one of 's', 'ms'"),
    ({"timezone": "UTC", "n": True}, "arguments.n must be an integer, not a boolean"),
    ({"timezone": "UTC", "n": 11}, "arguments.n must be at most 10"),
    ({"timezone": "UTC", "tags": ["a", 2]}, "arguments.tags[1] must be a string, not an integer"),
    ({"timezone": "UTC", "opt": 1}, "arguments.opt must be a string, not an integer"),
    ({"timezone": "UTC", "deep": {}}, "arguments.deep.x is required"),
    ({"timezone": "UTC", "rm": "-rf"}, "arguments.rm is not a known argument (known: timezone, unit, n, tags, opt, deep)"),
])
def test_schema(args: dict, problem: str | None) -> None:
    got = schema.validate(args, TIME_SCHEMA)
    if problem is None:
        assert got is None
    else:
        assert got is not None and got.startswith(problem), got


def test_schema_tolerates_odd_schemas() -> None:
    assert schema.validate({"a": 1}, {}) is None
    assert schema.validate({"a": 1}, True) is None
    assert schema.validate({"a": 1}, {"type": "object", "properties": "junk", "required": "a"}) is None
    deep: dict = {"type": "object"}
    for _ in range(100):
        deep = {"type": "object", "properties": {"a": deep}}
    value: dict = {}
    for _ in range(100):
        value = {"a": value}
    assert schema.validate(value, deep) is None  # no recursion error on a deep one


def test_audit_line_and_metric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DX_HOME", str(tmp_path))
    before = metrics.TOOL_CALLS.value("time", "get_current_time", "executed")
    audit.record(key=audit.key_id("k"), model="m", server="time", tool="get_current_time",
                 arguments='{"timezone": "UTC"}', decision=audit.EXECUTED, duration_s=0.0417, result_bytes=118)
    audit.record(key="none", model="m", server="time", tool="convert_time", arguments="{}", decision=audit.RETURNED)
    log = tmp_path / "logs" / "tools.jsonl"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert set(first) == {"time", "key", "model", "server", "tool", "arguments_sha256", "decision", "duration_ms",
                          "result_bytes"}
    assert first["key"] == audit.key_id("k") != "k" and len(first["key"]) == 12
    assert first["arguments_sha256"] == audit.arguments_hash('{"timezone": "UTC"}')
    assert "UTC" not in log.read_text()  # the arguments themselves are never written
    assert (first["decision"], first["duration_ms"], first["result_bytes"]) == ("executed", 41.7, 118)
    assert lines[1]["decision"] == "returned"
    assert metrics.TOOL_CALLS.value("time", "get_current_time", "executed") == before + 1
    assert oct(log.stat().st_mode & 0o777) == "0o600"
