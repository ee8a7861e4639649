"""``dx serve --mcp`` streams: each round's tokens reach the client as the engine produces them, the
MCP calls DX runs happen between rounds unseen, and the stream ends as the non-MCP path's does —
read by the real ``openai`` and ``ollama`` clients, with the real engine and SmolLM2 (a template
without tools: DX's generic format, whose ``{"response": ...}`` JSON is decoded as it streams).

Also: a chat the loop cannot change takes the plain path, and an allowed MCP server that dies is
restarted on its next call (or the call is a tool error), never a 5xx.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import ollama
import openai
import pytest
from support.serve_harness import DXServer, engine_binary, engine_without_prompt_cache, serve_model

from dx.mcp import policy
from dx.mcp.client import Tool
from dx.mcp.toolbox import Bound, Toolbox
from dx.server import tool_loop

MODEL = "smollm2:135m"
PEER = Path(__file__).resolve().parents[2] / "support" / "mcp_peer.py"
ASK = [{"role": "user", "content": "Say hello with the echo tool."}]
GREEDY = {"temperature": 0, "seed": 7, "max_tokens": 80}  # a call in DX's format, pretty-printed, takes ~50
OLLAMA_GREEDY = {"temperature": 0, "seed": 7, "num_predict": 80}


def named(tool: str) -> dict:
    return {"type": "function", "function": {"name": tool}}


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("peer-stream")
    (tmp / "markers").mkdir()
    return {"calls": tmp / "calls.txt", "markers": tmp / "markers"}


def peer_calls(peer: dict[str, Path]) -> list[str]:
    return peer["calls"].read_text().split() if peer["calls"].exists() else []


@pytest.fixture(scope="module")
def dx(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory,
       peer: dict[str, Path]) -> Iterator[DXServer]:
    tmp = tmp_path_factory.mktemp("mcp-stream")
    cfg = tmp / "mcp.json"
    cfg.write_text(json.dumps({"mcpServers": {"peer": {
        "command": sys.executable, "args": [str(PEER)],
        "env": {"PEER_CALLS": str(peer["calls"]), "PEER_DIR": str(peer["markers"])}}},
        "policy": {"default": "deny", "tools": {"peer.write_marker": "ask"}}}))  # + echo, die allowed below
    server = serve_model(tmp, smollm2_gguf, MODEL, "--ctx", "2048", "--mcp", str(cfg),
                         "--allow-tools", "peer.echo,peer.die", "--tool-timeout", "10", "--tool-rounds", "1",
                         engine=engine_without_prompt_cache(engine_binary(request), tmp))  # answers compared below
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oai(dx: DXServer) -> openai.OpenAI:
    return dx.openai(timeout=300)


@pytest.fixture(scope="module")
def oll(dx: DXServer) -> ollama.Client:
    return dx.ollama(timeout=300)


def audit(dx: DXServer) -> list[dict]:
    log = dx.home / "logs" / "tools.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def test_openai_stream_sends_tokens_as_they_come_after_dx_ran_the_tool(
        dx: DXServer, oai: openai.OpenAI, peer: dict[str, Path]) -> None:
    whole = oai.chat.completions.create(model=MODEL, messages=ASK, tool_choice=named("peer__echo"),  # type: ignore[arg-type]
                                        **GREEDY)
    expected = whole.choices[0].message.content
    assert expected and not whole.choices[0].message.tool_calls
    ran = peer_calls(peer).count("echo")
    stream = oai.chat.completions.create(model=MODEL, messages=ASK, tool_choice=named("peer__echo"),  # type: ignore[arg-type]
                                         stream=True, stream_options={"include_usage": True}, **GREEDY)
    pieces: list[tuple[float, str]] = []
    finish, usage, ids = None, None, set()
    for chunk in stream:  # the client parses every chunk
        ids.add(chunk.id)
        usage = chunk.usage or usage
        for ch in chunk.choices:
            assert not ch.delta.tool_calls  # DX ran the call: the client never sees it
            finish = ch.finish_reason or finish
            if ch.delta.content:
                pieces.append((time.monotonic(), ch.delta.content))
    assert len(pieces) > 1 and pieces[0][0] < pieces[-1][0]
    assert "".join(p for _t, p in pieces) == expected  # same prompt, same computation (no cache, no random id)
    assert finish in ("stop", "length") and usage is not None and usage.completion_tokens > 0
    assert len(ids) == 1  # one completion, whatever the rounds
    assert peer_calls(peer).count("echo") == ran + 1


def test_ollama_stream_sends_tokens_as_they_come_and_ends_as_ollama_does(
        dx: DXServer, oll: ollama.Client, peer: dict[str, Path]) -> None:
    """Ollama has no tool_choice: asked plainly, SmolLM2 calls echo (DX runs it), then answers."""
    whole = oll.chat(model=MODEL, messages=ASK, options=OLLAMA_GREEDY)
    ran = peer_calls(peer).count("echo")
    parts, seen = [], []
    for part in oll.chat(model=MODEL, messages=ASK, options=OLLAMA_GREEDY, stream=True):  # each chunk parsed
        parts.append(part)
        if part.message.content:
            seen.append((time.monotonic(), part.message.content))
    assert parts[-1].done and parts[-1].done_reason in ("stop", "length") and parts[-1].eval_count
    assert all(not p.done for p in parts[:-1]) and not any(p.message.tool_calls for p in parts)
    assert peer_calls(peer).count("echo") == ran + 1
    assert len(seen) > 1 and seen[0][0] < seen[-1][0]
    assert "".join(t for _t, t in seen) == whole.message.content


def test_streamed_call_for_the_client_is_an_ordinary_streamed_call(
        dx: DXServer, oai: openai.OpenAI, peer: dict[str, Path]) -> None:
    before = len(audit(dx))
    stream = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Write a marker."}],
                                         tool_choice=named("peer__write_marker"), stream=True, **GREEDY)  # type: ignore[arg-type]
    calls, finish = {}, None
    for chunk in stream:
        for ch in chunk.choices:
            finish = ch.finish_reason or finish
            for tc in ch.delta.tool_calls or []:
                slot = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                slot["name"] += (tc.function.name or "") if tc.function else ""
                slot["arguments"] += (tc.function.arguments or "") if tc.function else ""
    assert finish == "tool_calls" and [c["name"] for c in calls.values()] == ["peer__write_marker"]
    assert isinstance(json.loads(calls[0]["arguments"]), dict)
    assert "write_marker" not in peer_calls(peer) and list(peer["markers"].iterdir()) == []
    assert [(e["tool"], e["decision"]) for e in audit(dx)[before:]] == [("write_marker", "returned")]


def test_tool_choice_none_takes_the_plain_path(dx: DXServer, oai: openai.OpenAI) -> None:
    before = len(audit(dx))
    streamed = oai.chat.completions.create(model=MODEL, messages=ASK, tool_choice="none", stream=True,
                                           temperature=0, max_tokens=16)
    text = "".join(ch.delta.content or "" for chunk in streamed for ch in chunk.choices)
    assert text and audit(dx)[before:] == []


def test_a_dead_server_is_restarted_on_the_next_call(dx: DXServer, oai: openai.OpenAI,
                                                     peer: dict[str, Path]) -> None:
    before = len(audit(dx))
    died = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Stop."}],
                                       tool_choice=named("peer__die"), **GREEDY)  # type: ignore[arg-type]
    assert died.choices[0].message is not None  # the model was told; the client got a 200
    stream = oai.chat.completions.create(model=MODEL, messages=ASK, tool_choice=named("peer__echo"),  # type: ignore[arg-type]
                                         stream=True, **GREEDY)
    assert "".join(ch.delta.content or "" for chunk in stream for ch in chunk.choices)
    new = [(e["tool"], e["decision"]) for e in audit(dx)[before:]]
    assert new == [("die", "error"), ("echo", "executed")]
    assert "dx: MCP server 'peer' restarted (" in dx.stderr()


def _box(*decisions: str) -> Toolbox:
    box = Toolbox(None)  # type: ignore[arg-type]  # no servers: only the bound tools engaged() reads
    box.tools = {f"s__t{i}": Bound(f"s__t{i}", Tool("s", f"t{i}", "", {"type": "object"}), d)
                 for i, d in enumerate(decisions)}
    return box


@pytest.mark.parametrize(("decisions", "body", "engaged"), [
    (("allow",), {"messages": []}, True),
    (("ask",), {"messages": [], "tool_choice": "auto"}, True),
    (("allow",), {"messages": [], "tool_choice": "none"}, False),
    (("deny", "deny"), {"messages": []}, False),
    ((), {"messages": []}, False),
    (("allow",), {"messages": [], "tools": [{"type": "function", "function": {"name": "s__t0"}}]}, False),
    (("allow", "deny"), {"messages": [], "tools": [{"type": "function", "function": {"name": "s__t0"}}]}, False),
    (("allow", "ask"), {"messages": [], "tools": [{"type": "function", "function": {"name": "s__t0"}}]}, True),
    (("allow",), {"prompt": "x"}, False),
])
def test_the_loop_is_engaged_only_when_an_mcp_tool_can_be_called(decisions: tuple[str, ...], body: dict,
                                                                 engaged: bool) -> None:
    assert set(decisions) <= {policy.ALLOW, policy.ASK, policy.DENY}
    req = SimpleNamespace(app=SimpleNamespace(mcp=_box(*decisions)))
    assert tool_loop.engaged(req, body) is engaged  # type: ignore[arg-type]
    assert tool_loop.engaged(SimpleNamespace(app=SimpleNamespace(mcp=None)), body) is False  # type: ignore[arg-type]


@pytest.mark.parametrize("step", [1, 2, 3, 5, 64])
def test_response_text_decodes_the_json_string_as_it_grows(step: int) -> None:
    text = 'héllo "q" \\ 😀 \n\ttab / end'
    for doc in ('{"response": ' + json.dumps(text) + "}", ' {\n "response" :\t' + json.dumps(text, ensure_ascii=False)
                + " } "):
        dec = tool_loop.ResponseText()
        out = [dec.feed(doc[i:i + step]) for i in range(0, len(doc), step)]
        assert "".join(out) == text and dec.sent
    for other in ('{"tool_calls": [{"name": "x", "arguments": {}}]}', '{"response": {"a": 1}}'):
        dec = tool_loop.ResponseText()
        assert "".join(dec.feed(other[i:i + step]) for i in range(0, len(other), step)) == "" and not dec.sent
