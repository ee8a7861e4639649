"""DX's own MCP client (dx.mcp.client) and toolbox against real MCP servers: the reference
``mcp-server-time`` over stdio, and a ``fastmcp`` server (tests/support/mcp_peer.py) over stdio and
streamable HTTP. Hostile cases: a 50 MB result, a server that hangs, one that exits, arguments that
fail the schema, a tool name two servers share — each a clear outcome, nothing hangs, nothing leaks.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dx.mcp import config
from dx.mcp.client import Client, McpError
from dx.mcp.toolbox import Toolbox

pytestmark = pytest.mark.integration

PEER = Path(__file__).resolve().parents[2] / "support" / "mcp_peer.py"
TIME_SERVER = shutil.which("mcp-server-time", path=str(Path(sys.executable).parent)) or "mcp-server-time"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def peer_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "markers").mkdir()
    return {"PEER_CALLS": str(tmp_path / "calls.txt"), "PEER_DIR": str(tmp_path / "markers")}


def calls(env: dict[str, str]) -> list[str]:
    p = Path(env["PEER_CALLS"])
    return p.read_text().split() if p.exists() else []


@pytest.fixture
def http_peer(peer_env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(PEER), "http", str(port)], env={**os.environ, **peer_env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:  # uvicorn waits for the hung tool's thread
        proc.kill()
        proc.wait(10)


def load(tmp_path: Path, servers: dict, policy: dict | None = None) -> config.McpConfig:
    doc = {"mcpServers": servers, **({"policy": policy} if policy else {})}
    p = tmp_path / "mcp.json"
    p.write_text(json.dumps(doc))
    return config.load(p)


def stdio_peer(peer_env: dict[str, str]) -> dict:
    return {"command": sys.executable, "args": [str(PEER)], "env": peer_env}


def test_time_server_over_stdio(tmp_path: Path) -> None:
    cfg = load(tmp_path, {"time": {"command": TIME_SERVER, "args": ["--local-timezone", "UTC"]}})
    with Client(cfg.servers[0], timeout=30) as client:
        tools = {t.name: t for t in client.list_tools()}
        assert {"get_current_time", "convert_time"} <= set(tools)
        assert "timezone" in tools["get_current_time"].input_schema["properties"]
        result = client.call_tool("get_current_time", {"timezone": "Europe/Paris"})
        assert result.get("isError") is not True
        assert "Europe/Paris" in result["content"][0]["text"]
        bad = client.call_tool("get_current_time", {"timezone": "Not/AZone"})
        assert bad.get("isError") is True  # the server's own error is a result, not a failure of DX


def test_peer_over_streamable_http(tmp_path: Path, http_peer: str, peer_env: dict[str, str]) -> None:
    cfg = load(tmp_path, {"peer": {"url": http_peer}})
    with Client(cfg.servers[0], timeout=30) as client:
        tools = {t.name: t for t in client.list_tools()}
        assert tools["echo"].read_only and not tools["write_marker"].read_only
        assert client.call_tool("echo", {"text": "hi"})["content"][0]["text"] == "echo: hi"
        assert client._transport.session  # type: ignore[union-attr] - the server's Mcp-Session-Id, sent back
    assert calls(peer_env) == ["echo"]


def test_toolbox_policy_schema_and_audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         peer_env: dict[str, str]) -> None:
    monkeypatch.setenv("DX_HOME", str(tmp_path / "home"))
    cfg = load(tmp_path, {"time": {"command": TIME_SERVER}, "peer": stdio_peer(peer_env)},
               {"readOnly": "allow", "tools": {"peer.write_marker": "deny"}})
    box = Toolbox(cfg, call_timeout=5).open()
    try:
        names = {t["function"]["name"] for t in box.openai_tools()}
        # the name both servers have stays two tools; the denied one is not shown to the model
        assert {"time__get_current_time", "peer__get_current_time", "peer__echo"} <= names
        assert "peer__write_marker" not in names
        assert box.tools["peer__echo"].decision == "allow"  # read-only: allowed by the policy
        assert box.tools["peer__big"].decision == "ask"
        out = box.run(box.tools["peer__get_current_time"], '{"timezone": "UTC"}', key="k", model="m")
        assert (out.decision, out.text) == ("executed", "peer time in UTC")
        bad = box.run(box.tools["peer__echo"], '{"text": 5}', key="k", model="m")
        assert bad.decision == "invalid" and "arguments.text must be a string" in bad.text
        junk = box.run(box.tools["peer__echo"], "not json", key="k", model="m")
        assert junk.decision == "invalid"
        assert calls(peer_env) == ["get_current_time"]  # the invalid calls never reached the server
    finally:
        box.close()
    log = [json.loads(x) for x in (tmp_path / "home" / "logs" / "tools.jsonl").read_text().splitlines()]
    assert [(e["server"], e["tool"], e["decision"]) for e in log] == [
        ("peer", "get_current_time", "executed"), ("peer", "echo", "invalid"), ("peer", "echo", "invalid")]


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_hostile_big_result_and_hang(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, peer_env: dict[str, str],
                                     transport: str, request: pytest.FixtureRequest) -> None:
    monkeypatch.setenv("DX_HOME", str(tmp_path / "home"))
    server = stdio_peer(peer_env) if transport == "stdio" else {"url": request.getfixturevalue("http_peer")}
    box = Toolbox(load(tmp_path, {"peer": server}), call_timeout=3, max_result_bytes=1 << 20).open()
    try:
        started = time.monotonic()
        big = box.run(box.tools["peer__big"], "{}", key="k", model="m")
        assert big.decision == "error" and "larger than 1048576 bytes" in big.text
        hang = box.run(box.tools["peer__hang"], "{}", key="k", model="m")
        assert hang.decision == "timeout" and "within 3 s" in hang.text
        assert time.monotonic() - started < 30
        if transport == "stdio":  # the session goes on after both (one call at a time, answers matched by id)
            assert box.run(box.tools["peer__echo"], '{"text": "still"}', key="k", model="m").text == "echo: still"
    finally:
        box.close()


def test_server_that_exits_is_restarted_and_close_kills_the_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, peer_env: dict[str, str],
        capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DX_HOME", str(tmp_path / "home"))
    box = Toolbox(load(tmp_path, {"peer": stdio_peer(peer_env)}), call_timeout=10).open()
    client = box.clients["peer"]
    pid = client._transport.proc.pid  # type: ignore[union-attr]
    try:
        started = time.monotonic()
        out = box.run(box.tools["peer__die"], "{}", key="k", model="m")
        assert out.decision == "error" and "the server exited (code 3)" in out.text
        assert time.monotonic() - started < 5
        again = box.run(box.tools["peer__echo"], '{"text": "x"}', key="k", model="m")  # the next call restarts it
        assert again.decision == "executed" and again.text == "echo: x"
        assert client.restarts == 1 and "echo" in {t.name for t in client.tools}
        new_pid = client._transport.proc.pid  # type: ignore[union-attr]
        assert new_pid != pid
        err = capfd.readouterr().err
        assert "dx: MCP server 'peer' is gone (exit code 3" in err and "dx: MCP server 'peer' restarted (" in err
        assert box.run(box.tools["peer__echo"], '{"text": "y"}', key="k", model="m").text == "echo: y"
        assert client.restarts == 1  # alive: not restarted again
    finally:
        box.close()
    for gone in (pid, new_pid):
        with pytest.raises(ProcessLookupError):
            os.kill(gone, 0)
    assert calls(peer_env) == ["die", "echo", "echo"]


def test_a_restart_that_fails_is_a_tool_error_audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      peer_env: dict[str, str]) -> None:
    """The server starts once; started again it exits at once: the call is an error for the model, audited."""
    monkeypatch.setenv("DX_HOME", str(tmp_path / "home"))
    once = tmp_path / "started"
    script = (f'if [ -e "{once}" ]; then echo "no second start" >&2; exit 7; fi; touch "{once}"; '
              f'exec "{sys.executable}" "{PEER}"')
    box = Toolbox(load(tmp_path, {"peer": {"command": "sh", "args": ["-c", script], "env": peer_env}}),
                  call_timeout=10, start_timeout=20).open()
    try:
        assert box.run(box.tools["peer__die"], "{}", key="k", model="m").decision == "error"
        started = time.monotonic()
        out = box.run(box.tools["peer__echo"], '{"text": "x"}', key="k", model="m")
        assert time.monotonic() - started < 20
        assert out.decision == "error" and out.is_error
        assert out.text.startswith("error: peer: the server is gone (exit code 3")
        assert "and did not restart: peer: the server exited (code 7)" in out.text  # + its stderr line, if read in time
        log = [json.loads(x) for x in (tmp_path / "home" / "logs" / "tools.jsonl").read_text().splitlines()]
        assert [(e["tool"], e["decision"]) for e in log] == [("die", "error"), ("echo", "error")]
    finally:
        box.close()
    assert calls(peer_env) == ["die"]


def test_close_ends_a_hung_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, peer_env: dict[str, str]) -> None:
    monkeypatch.setenv("DX_HOME", str(tmp_path / "home"))
    box = Toolbox(load(tmp_path, {"peer": stdio_peer(peer_env)}), call_timeout=1).open()
    pid = box.clients["peer"]._transport.proc.pid  # type: ignore[union-attr]
    box.run(box.tools["peer__hang"], "{}", key="k", model="m")
    started = time.monotonic()
    box.close()
    assert time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize(("server", "words"), [
    ({"command": "/nonexistent/mcp-server"}, ["mcpServers.bad", "cannot start", "/nonexistent/mcp-server"]),
    ({"command": sys.executable, "args": ["-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(4)"]},
     ["mcpServers.bad", "exited (code 4)", "boom"]),
    ({"url": "http://127.0.0.1:9/mcp"}, ["mcpServers.bad", "cannot reach"]),
])
def test_a_server_that_cannot_start_is_one_line(tmp_path: Path, server: dict, words: list[str]) -> None:
    from dxverify.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as exc:
        Toolbox(load(tmp_path, {"bad": server}), start_timeout=10).open()
    text = str(exc.value)
    assert "\n" not in text
    for w in words:
        assert w in text, text


def test_client_error_type_is_mcp_error() -> None:
    assert issubclass(McpError, Exception)


def test_serve_decisions_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, peer_env: dict[str, str]) -> None:
    """dx.server.tool_loop.handle_calls with real servers: allowed calls run, a denied one is refused (and
    told to the model), and one call DX may not run sends the whole turn back unrun."""
    from dx.server.tool_loop import handle_calls

    monkeypatch.setenv("DX_HOME", str(tmp_path / "home"))
    cfg = load(tmp_path, {"peer": stdio_peer(peer_env)},
               {"tools": {"peer.echo": "allow", "peer.write_marker": "deny", "peer.big": "ask"}})
    box = Toolbox(cfg, call_timeout=5).open()

    def call(name: str, args: str) -> dict:
        return {"id": f"call_{name}", "type": "function", "function": {"name": name, "arguments": args}}

    try:
        out = handle_calls(box, [call("peer__echo", '{"text": "a"}'), call("peer__write_marker", '{"name": "m"}')],
                           set(), key="k", model="m")
        assert out is not None
        assert out[0] == {"role": "tool", "tool_call_id": "call_peer__echo", "content": "echo: a"}
        assert out[1]["tool_call_id"] == "call_peer__write_marker"
        assert out[1]["content"].startswith("error: refused: the operator's policy does not allow peer.write_marker")
        # an ask tool, or the client's own, in the turn: nothing runs, the client gets the calls
        assert handle_calls(box, [call("peer__echo", '{"text": "b"}'), call("peer__big", "{}")], set(),
                            key="k", model="m") is None
        assert handle_calls(box, [call("peer__echo", '{"text": "c"}'), call("mine", "{}")], {"mine"},
                            key="k", model="m") is None
        # the client's tool of the same name as an MCP one is the client's: never run by DX
        assert handle_calls(box, [call("peer__echo", '{"text": "d"}')], {"peer__echo"}, key="k", model="m") is None
    finally:
        box.close()
    assert calls(peer_env) == ["echo"]
    assert not list(Path(peer_env["PEER_DIR"]).iterdir())
    log = [json.loads(x) for x in (tmp_path / "home" / "logs" / "tools.jsonl").read_text().splitlines()]
    assert [(e["tool"], e["decision"]) for e in log] == [
        ("echo", "executed"), ("write_marker", "denied"), ("echo", "returned"), ("big", "returned"),
        ("echo", "returned")]
