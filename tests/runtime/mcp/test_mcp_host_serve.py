"""``dx serve --mcp``: the server enforces the operator's consent, with the real engine, SmolLM2 and real
MCP servers (the fastmcp peer of tests/support/mcp_peer.py over stdio, ``mcp-server-time``), driven by
the real ``openai`` and ``ollama`` clients with auth on.

What a 135M model decides is not asserted: a call is forced with a named ``tool_choice``; what is
asserted is DX's part — an allowed call runs (the peer saw it, the audit log and /metrics count it),
any other call goes back to the client as ``tool_calls`` and never reaches the server, a hung tool is
a timeout, and llama-server's own tool routes are never reachable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from support.serve_harness import DXServer, dx_env, engine_binary, serve_model

from dx.metrics import parse_samples

pytestmark = pytest.mark.integration

MODEL = "smollm2:135m"
PEER = Path(__file__).resolve().parents[2] / "support" / "mcp_peer.py"
TIME_SERVER = str(Path(sys.executable).parent / "mcp-server-time")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "Say hello with the echo tool."}]
GREEDY = {"temperature": 0, "seed": 7, "max_tokens": 100}


def named(tool: str) -> dict:
    return {"type": "function", "function": {"name": tool}}


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("peer")
    (tmp / "markers").mkdir()
    return {"calls": tmp / "calls.txt", "markers": tmp / "markers", "dir": tmp}


def peer_calls(peer: dict[str, Path]) -> list[str]:
    return peer["calls"].read_text().split() if peer["calls"].exists() else []


def write_config(where: Path, peer: dict[str, Path]) -> Path:
    doc = {"mcpServers": {
        "peer": {"command": sys.executable, "args": [str(PEER)],
                 "env": {"PEER_CALLS": str(peer["calls"]), "PEER_DIR": str(peer["markers"])}},
        "time": {"command": TIME_SERVER, "args": ["--local-timezone", "UTC"]}},
        "policy": {"default": "ask", "tools": {"peer.die": "deny", "time.*": "allow"}}}
    p = where / "mcp.json"
    p.write_text(json.dumps(doc))
    return p


@pytest.fixture(scope="module")
def dx(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory,
       peer: dict[str, Path]) -> Iterator[DXServer]:
    engine = engine_binary(request)
    tmp = tmp_path_factory.mktemp("mcp-serve")
    cfg = write_config(tmp, peer)
    server = serve_model(tmp, smollm2_gguf, MODEL, "--ctx", "2048", "--mcp", str(cfg),
                         "--allow-tools", "peer.echo,peer.hang", "--tool-timeout", "2", "--tool-rounds", "2",
                         engine=engine)
    assert server.api_key
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oai(dx: DXServer) -> openai.OpenAI:
    return dx.openai(timeout=300)


def audit(dx: DXServer) -> list[dict]:
    log = dx.home / "logs" / "tools.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def tool_metric(dx: DXServer, tool: str, decision: str) -> float:
    text = httpx.get(f"{dx.url}/metrics", headers=dx.headers, timeout=30).text
    for labels, value in parse_samples(text).get("dx_tool_calls_total", []):
        if labels.get("tool") == tool and labels.get("decision") == decision:
            return value
    return 0.0


def test_banner_names_each_tool_and_who_decides(dx: DXServer) -> None:
    banner = next(line for line in dx.lines if "MCP tools" in line)
    assert "peer.echo (dx runs)" in banner and "peer.write_marker (returned to the client)" in banner
    assert "peer.die (denied)" in banner and "time.get_current_time (dx runs)" in banner


def test_allowed_call_is_executed_audited_and_counted(dx: DXServer, oai: openai.OpenAI,
                                                      peer: dict[str, Path]) -> None:
    before = len(audit(dx))
    r = oai.chat.completions.create(model=MODEL, messages=ASK, tool_choice=named("peer__echo"),  # type: ignore[arg-type]
                                    **GREEDY)
    assert r.choices[0].message is not None
    for call in r.choices[0].message.tool_calls or []:  # whatever comes back is never a call DX may run
        assert call.function.name not in ("peer__echo", "peer__hang", "time__get_current_time")
    assert "echo" in peer_calls(peer)
    new = audit(dx)[before:]
    ran = [e for e in new if e["tool"] == "echo"]
    assert ran and ran[0]["decision"] == "executed" and ran[0]["server"] == "peer" and ran[0]["model"] == MODEL
    assert ran[0]["result_bytes"] > 0 and ran[0]["duration_ms"] >= 0 and len(ran[0]["arguments_sha256"]) == 64
    assert ran[0]["key"] != "none" and dx.api_key not in json.dumps(new)
    assert tool_metric(dx, "echo", "executed") >= 1


def test_a_call_to_a_tool_not_allowed_goes_back_to_the_client_unrun(dx: DXServer, oai: openai.OpenAI,
                                                                     peer: dict[str, Path]) -> None:
    before = len(audit(dx))
    r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Write a marker."}],
                                    tool_choice=named("peer__write_marker"), **GREEDY)  # type: ignore[arg-type]
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls or []] == ["peer__write_marker"]
    assert "write_marker" not in peer_calls(peer)  # the server never saw it
    assert list(peer["markers"].iterdir()) == []
    assert [(e["tool"], e["decision"]) for e in audit(dx)[before:]] == [("write_marker", "returned")]
    assert tool_metric(dx, "write_marker", "returned") >= 1


def test_the_clients_own_tool_goes_back_to_it(dx: DXServer, oai: openai.OpenAI) -> None:
    before = len(audit(dx))
    r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                    tools=[WEATHER], tool_choice=named("get_weather"), **GREEDY)  # type: ignore[arg-type]
    assert [c.function.name for c in r.choices[0].message.tool_calls or []] == ["get_weather"]
    assert audit(dx)[before:] == []  # not an MCP tool: nothing for DX to decide or log


def test_streamed_answer_carries_the_returned_call(dx: DXServer, oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Write a marker."}],
                                         tool_choice=named("peer__write_marker"), stream=True, **GREEDY)  # type: ignore[arg-type]
    names = [tc.function.name for chunk in stream for ch in chunk.choices for tc in ch.delta.tool_calls or []
             if tc.function and tc.function.name]
    assert names == ["peer__write_marker"]


def test_a_denied_tool_is_not_offered(dx: DXServer, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):  # naming it is naming a tool the request does not have
        oai.chat.completions.create(model=MODEL, messages=ASK, tool_choice=named("peer__die"), **GREEDY)  # type: ignore[arg-type]


def test_a_hung_tool_is_a_timeout_and_the_answer_still_comes(dx: DXServer, oai: openai.OpenAI) -> None:
    before = len(audit(dx))
    r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Wait."}],
                                    tool_choice=named("peer__hang"), **GREEDY)  # type: ignore[arg-type]
    assert r.choices[0].message is not None
    hung = [e for e in audit(dx)[before:] if e["tool"] == "hang"]
    assert hung and hung[0]["decision"] == "timeout" and 1900 <= hung[0]["duration_ms"] < 10_000


def test_ollama_client_sees_only_calls_dx_may_not_run(dx: DXServer, peer: dict[str, Path]) -> None:
    client = dx.ollama(timeout=300)
    r = client.chat(model=MODEL, messages=[{"role": "user", "content": "What time is it in UTC?"}],
                    options={"temperature": 0, "seed": 7, "num_predict": 100})
    for call in r.message.tool_calls or []:
        assert call.function.name not in ("peer__echo", "peer__hang", "time__get_current_time")
    assert list(peer["markers"].iterdir()) == []


def test_engine_tool_routes_are_never_reachable(dx: DXServer) -> None:
    for method in ("GET", "POST"):
        for path in ("/tools", "/cors-proxy"):
            r = httpx.request(method, f"{dx.url}{path}", headers=dx.headers, json={} if method == "POST" else None,
                              timeout=30)
            assert r.status_code == 404, (method, path, r.text)
    pids = dx.children()
    assert pids
    for pid in pids:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        for flag in (b"--tools", b"--mcp-servers-config", b"--mcp-servers-json", b"--agent", b"-ag",
                     b"--ui-mcp-proxy", b"--webui-mcp-proxy", b"--tools-runtime"):
            assert flag not in argv
        assert not [e for e in environ if e.startswith(b"LLAMA_ARG_")]


def test_mcp_with_no_auth_is_refused_unless_said(tmp_path: Path, request: pytest.FixtureRequest,
                                                 peer: dict[str, Path]) -> None:
    cfg = write_config(tmp_path, peer)
    env = {**dx_env(tmp_path / "home", engine_binary(request)), "LLAMA_ARG_TOOLS": "all"}
    cmd = [sys.executable, "-m", "dx", "serve", "--port", "0", "--no-auth", "--mcp", str(cfg)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "--mcp with --no-auth" in done.stderr and "--allow-tools-without-auth" in done.stderr
    assert "Traceback" not in done.stderr
    bad = subprocess.run([sys.executable, "-m", "dx", "serve", "--port", "0", "--allow-tools", "peer.echo"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--allow-tools needs --mcp" in bad.stderr
    missing = subprocess.run([*cmd[:-1], str(tmp_path / "nope.json"), "--allow-tools-without-auth"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "nope.json: no such file" in missing.stderr


def test_mcp_with_no_auth_runs_when_said(tmp_path: Path, request: pytest.FixtureRequest, smollm2_gguf: Path,
                                         peer: dict[str, Path]) -> None:
    cfg = write_config(tmp_path, peer)
    server = serve_model(tmp_path, smollm2_gguf, MODEL, "--no-auth", "--allow-tools-without-auth", "--no-preload",
                         "--mcp", str(cfg), engine=engine_binary(request))
    try:
        assert any("MCP tools" in line for line in server.lines)
        assert httpx.get(f"{server.url}/tools", timeout=30).status_code == 404
    finally:
        server.stop()
