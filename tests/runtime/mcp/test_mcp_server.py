"""`dx mcp` driven by the official `mcp` SDK's client — over stdio (the SDK spawns `dx mcp MODEL`) and
over streamable HTTP (`dx mcp --http`) — with the real engine and the real SmolLM2. Nothing here is DX's
own code on the client side: if DX's JSON-RPC core (dx.mcp.rpc) and the SDK disagree, these fail."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from support.serve_harness import _KEY, _URL, DXServer, dx_env, engine_binary, stop_process

pytestmark = pytest.mark.integration

MODEL = "smollm2:135m"
SMOLLM2_EMBEDDING_LENGTH = 576  # SmolLM2-135M's n_embd (its GGUF's llama.embedding_length)
SessionFn = Callable[[ClientSession], Awaitable[Any]]


@pytest.fixture(scope="module")
def home(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dx.models.catalog import Store

    tmp = tmp_path_factory.mktemp("mcp")
    Store(root=tmp / "home", ollama_dir=False).import_file(smollm2_gguf, MODEL)
    return tmp / "home"


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest) -> Path:
    return engine_binary(request)


def stdio_params(home: Path, engine: Path, *args: str) -> StdioServerParameters:
    """How Claude Desktop / Cursor start it: {"command": ..., "args": ["mcp", MODEL]} (here: this venv's dx)."""
    return StdioServerParameters(command=sys.executable, args=["-m", "dx", "mcp", *args],
                                 env=dx_env(home, engine))


def over_stdio(params: StdioServerParameters, fn: SessionFn, errlog: Any = None) -> Any:
    async def main() -> Any:
        with open(errlog or "/dev/null", "a") as err:
            async with stdio_client(params, errlog=err) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                return await fn(session)
    return anyio.run(main)


# ------------------------------------------------------------------ stdio: one server for the happy paths
def test_stdio_tools_resources_and_calls(home: Path, engine: Path, tmp_path: Path) -> None:
    async def drive(s: ClientSession) -> dict[str, Any]:
        out: dict[str, Any] = {"version": s.protocol_version, "server": s.server_info}
        out["tools"] = {t.name: t for t in (await s.list_tools()).tools}
        out["generate"] = await s.call_tool("generate", {"prompt": "Say hello.", "max_tokens": 8, "temperature": 0})
        out["generate2"] = await s.call_tool("generate", {"prompt": "Say hello.", "max_tokens": 8, "temperature": 0})
        out["system"] = await s.call_tool("generate", {"prompt": "Hi", "system": "You are terse.", "max_tokens": 4})
        out["chat"] = await s.call_tool("chat", {"messages": [{"role": "user", "content": "What is 2+2?"}],
                                                  "max_tokens": 8, "temperature": 0})
        out["embed"] = await s.call_tool("embed", {"texts": ["a cat", "a dog"]})
        out["resources"] = (await s.list_resources()).resources
        out["read"] = await s.read_resource(out["resources"][0].uri)
        out["ping"] = await s.send_ping()
        return out

    errlog = tmp_path / "stderr"
    r = over_stdio(stdio_params(home, engine, MODEL), drive, errlog)
    assert r["version"] == "2025-11-25"  # the SDK offers its newest handshake revision; DX speaks it
    assert r["server"].name == "dx"
    assert set(r["tools"]) == {"generate", "chat", "embed"}
    assert r["tools"]["generate"].input_schema["required"] == ["prompt"]

    gen = r["generate"]
    assert not gen.is_error
    assert gen.content[0].text.strip()
    assert gen.structured_content["text"] == gen.content[0].text
    assert 0 < gen.structured_content["usage"]["completion_tokens"] <= 8
    assert r["generate2"].content[0].text == gen.content[0].text  # temperature 0: the same words
    assert not r["system"].is_error and r["system"].structured_content["usage"]["completion_tokens"] <= 4

    chat = r["chat"]
    assert not chat.is_error and chat.content[0].text.strip()
    assert chat.structured_content["message"]["role"] == "assistant"

    emb = r["embed"]
    assert not emb.is_error
    vectors = emb.structured_content["embeddings"]
    assert len(vectors) == 2 and all(len(v) == SMOLLM2_EMBEDDING_LENGTH for v in vectors)
    assert vectors[0] != vectors[1]
    assert json.loads(emb.content[0].text)["embeddings"] == vectors  # the text is the same result, serialized

    names = [res.name for res in r["resources"]]
    assert names == [MODEL]
    assert str(r["resources"][0].uri) == "dx://models/smollm2:135m"
    doc = json.loads(r["read"].contents[0].text)
    assert doc["name"] == MODEL and doc["served"] is True
    assert doc["embedding_length"] == SMOLLM2_EMBEDDING_LENGTH and "completion" in doc["capabilities"]
    log = errlog.read_text()
    assert "Traceback" not in log and "dx: MCP server (stdio)" in log  # the logs went to stderr


def test_stdio_bad_calls_are_errors_not_crashes(home: Path, engine: Path) -> None:
    """Every bad call gets its own clear error; the server answers the next call as if nothing happened.
    Run without a model: nothing here needs the engine except the last call, which names one."""
    from mcp.shared.exceptions import MCPError

    async def drive(s: ClientSession) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for label, name, args in [
            ("unknown", "nope", {}),
            ("missing", "generate", {}),
            ("type", "generate", {"prompt": 42}),
            ("extra", "generate", {"prompt": "x", "colour": "red"}),
            ("range", "generate", {"prompt": "x", "temperature": -1}),
            ("empty", "embed", {"texts": []}),
            ("role", "chat", {"messages": [{"role": "wizard", "content": "x"}]}),
            ("nomodel", "generate", {"prompt": "x"}),  # started without MODEL: model is required
        ]:
            try:
                out[label] = await s.call_tool(name, args)
            except MCPError as exc:
                out[label] = exc
        out["unknown_model"] = await s.call_tool("generate", {"prompt": "x", "model": "no-such-model"})
        out["missing_resource"] = None
        try:
            await s.read_resource("dx://models/no-such-model")
        except MCPError as exc:
            out["missing_resource"] = exc
        out["after"] = await s.call_tool("embed", {"texts": ["still here"], "model": MODEL})
        return out

    r = over_stdio(stdio_params(home, engine), drive)
    for label, words in [("unknown", "Unknown tool: 'nope'"), ("missing", "generate.prompt is required"),
                         ("type", "generate.prompt must be a string, not an integer"),
                         ("extra", "generate.colour is not a known argument"),
                         ("range", "generate.temperature must be at least 0"),
                         ("empty", "embed.texts must have at least 1 item"),
                         ("role", "chat.messages[0].role must be one of"),
                         ("nomodel", "model is required")]:
        exc = r[label]
        assert isinstance(exc, Exception), (label, exc)
        assert exc.error.code == -32602 and words in exc.error.message, (label, exc.error)
    bad_model = r["unknown_model"]
    assert bad_model.is_error and "no-such-model" in bad_model.content[0].text  # ran, failed: the model reads why
    assert "/" not in bad_model.content[0].text.replace("no-such-model", "")  # no server path
    assert r["missing_resource"].error.code == -32002
    assert len(r["after"].structured_content["embeddings"][0]) == SMOLLM2_EMBEDDING_LENGTH


def test_stdio_garbage_line_is_a_parse_error_and_the_server_goes_on(home: Path, engine: Path) -> None:
    """Raw lines, as a broken client would send: not JSON → -32700 with id null; not JSON-RPC → -32600;
    then a ping is still answered, and EOF on stdin ends the process (exit 0)."""
    proc = subprocess.Popen([sys.executable, "-m", "dx", "mcp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dx_env(home, engine))
    lines = [b"this is not json", b'{"jsonrpc":"2.0","id":7}', b"[1,2]", b'{"jsonrpc":"1.0","id":8,"method":"ping"}',
             b'{"jsonrpc":"2.0","id":9,"method":"no/such"}', b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
             b'{"jsonrpc":"2.0","id":"p","method":"ping"}']
    out, err = proc.communicate(b"\n".join(lines) + b"\n", timeout=60)
    assert proc.returncode == 0, err.decode()
    answers = [json.loads(line) for line in out.decode().splitlines()]
    assert len(answers) == 6  # the notification has no answer
    by_id = {json.dumps(a["id"]): a for a in answers if a["id"] is not None}
    nulls = [a for a in answers if a["id"] is None]
    assert nulls[0]["error"]["code"] == -32700
    assert all(a["error"]["code"] == -32600 for a in nulls[1:])
    assert by_id["8"]["error"]["code"] == -32600  # jsonrpc 1.0, its id readable
    assert by_id["9"]["error"] == {"code": -32601, "message": "Method not found: no/such"}
    assert by_id['"p"'] == {"jsonrpc": "2.0", "id": "p", "result": {}}
    assert b"Traceback" not in err


# ------------------------------------------------------------------ streamable HTTP (dx mcp --http)
@pytest.fixture(scope="module")
def http_server(home: Path, engine: Path):  # type: ignore[no-untyped-def]
    stderr_path = home.parent / "dx-mcp-http.stderr"
    proc = subprocess.Popen([sys.executable, "-m", "dx", "mcp", MODEL, "--http", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=open(stderr_path, "wb"), env=dx_env(home, engine),  # noqa: SIM115
                            text=True)
    assert proc.stdout is not None
    url = key = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (url and key):
        line = proc.stdout.readline()
        if not line:
            break
        url = url or ((m := _URL.search(line)) and m.group(1))
        key = key or ((m := _KEY.search(line)) and m.group(1))
    if not (url and key):
        stop_process(proc)
        raise AssertionError(f"dx mcp --http did not start: {stderr_path.read_text()}")
    server = DXServer(proc, url, key, home, stderr_path)
    yield server
    server.stop()


def over_http(server: DXServer, fn: SessionFn, headers: dict[str, str] | None = None) -> Any:
    async def main() -> Any:
        client = create_mcp_http_client(headers=server.headers if headers is None else headers)
        async with client, streamable_http_client(f"{server.url}/mcp", http_client=client) as (read, write), \
                ClientSession(read, write) as session:
            await session.initialize()
            return await fn(session)
    return anyio.run(main)


def test_http_tools_and_calls(http_server: DXServer) -> None:
    async def drive(s: ClientSession) -> dict[str, Any]:
        return {
            "tools": [t.name for t in (await s.list_tools()).tools],
            "generate": await s.call_tool("generate", {"prompt": "Say hello.", "max_tokens": 8, "temperature": 0}),
            "embed": await s.call_tool("embed", {"texts": ["hello"]}),
            "resources": [str(res.uri) for res in (await s.list_resources()).resources],
            "bad": await s.call_tool("generate", {"prompt": "x", "model": "no-such-model"}),
        }

    r = over_http(http_server, drive)
    assert r["tools"] == ["generate", "chat", "embed"]
    assert not r["generate"].is_error and r["generate"].content[0].text.strip()
    assert len(r["embed"].structured_content["embeddings"][0]) == SMOLLM2_EMBEDDING_LENGTH
    assert r["resources"] == ["dx://models/smollm2:135m"]
    assert r["bad"].is_error


def _post(server: DXServer, doc: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    return httpx.post(f"{server.url}/mcp", content=doc if isinstance(doc, bytes) else json.dumps(doc),
                      headers={**base, **server.headers, **(headers or {})}, timeout=60)


INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


def test_http_auth_origin_and_shapes(http_server: DXServer) -> None:
    no_key = httpx.post(f"{http_server.url}/mcp", json=INIT, timeout=30)
    assert no_key.status_code == 401
    wrong_key = _post(http_server, INIT, {"Authorization": "Bearer not-the-key"})
    assert wrong_key.status_code == 401
    evil = _post(http_server, INIT, {"Origin": "https://evil.example"})
    assert evil.status_code == 403 and "evil.example" in evil.text

    ok = _post(http_server, INIT)
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("application/json")
    assert ok.json()["result"]["protocolVersion"] == "2025-03-26"  # an older revision DX speaks: kept
    newer = _post(http_server, {**INIT, "params": {**INIT["params"], "protocolVersion": "2099-01-01"}})
    assert newer.json()["result"]["protocolVersion"] == "2025-11-25"  # one DX does not: DX's newest

    note = _post(http_server, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert note.status_code == 202 and note.content == b""
    garbage = _post(http_server, b"{not json")
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == -32700
    bad_version = _post(http_server, {"jsonrpc": "2.0", "id": 2, "method": "ping"}, {"MCP-Protocol-Version": "1999"})
    assert bad_version.status_code == 400
    assert _post(http_server, {"jsonrpc": "2.0", "id": 3, "method": "ping"}).json() == \
        {"jsonrpc": "2.0", "id": 3, "result": {}}
    get = httpx.get(f"{http_server.url}/mcp", headers={**http_server.headers, "Accept": "text/event-stream"})
    assert get.status_code == 405 and get.headers["allow"] == "POST"
    assert "Traceback" not in http_server.stderr()
