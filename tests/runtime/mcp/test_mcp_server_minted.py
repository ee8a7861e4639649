"""A minted executable is a one-file MCP server: the `mcp` SDK's stdio client spawns
`./dx-smollm2-cpu-linux-<arch> mcp` exactly as Claude Desktop or Cursor would from
{"mcpServers": {"smollm2": {"command": "/path/dx-smollm2-cpu-linux-x86_64", "args": ["mcp"]}}}.

Uses the session fixture ``minted_smollm2`` (a real `dxbuild` mint; a changed runtime rebuilds
the Nuitka bundle once, minutes). Nothing of this machine's DX is in its environment."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

pytestmark = pytest.mark.integration

SMOLLM2_EMBEDDING_LENGTH = 576


def test_minted_executable_is_an_mcp_server(minted_smollm2: Path, tmp_path: Path) -> None:
    where, home = tmp_path / "elsewhere", tmp_path / "home"
    where.mkdir()
    (home / "tmp").mkdir(parents=True)
    exe = where / minted_smollm2.name
    shutil.copy2(minted_smollm2, exe)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DX_", "XDG_", "NUITKA_", "PYTHON", "OLLAMA_", "OPENAI_"))}
    env.update(HOME=str(home), TMPDIR=str(home / "tmp"))
    # the config a user writes: the executable and one argument
    config = {"mcpServers": {"smollm2": {"command": str(exe), "args": ["mcp"]}}}
    entry = config["mcpServers"]["smollm2"]
    params = StdioServerParameters(command=entry["command"], args=entry["args"], env=env)

    async def main() -> dict:
        with open(tmp_path / "stderr", "w") as err:
            async with stdio_client(params, errlog=err) as (read, write), ClientSession(read, write) as s:
                await s.initialize()
                return {
                    "tools": [t.name for t in (await s.list_tools()).tools],
                    "generate": await s.call_tool("generate", {"prompt": "Say hello.", "max_tokens": 8,
                                                               "temperature": 0}),
                    "embed": await s.call_tool("embed", {"texts": ["hello"]}),
                    "resources": [r.name for r in (await s.list_resources()).resources],
                }

    r = anyio.run(main)
    log = (tmp_path / "stderr").read_text()
    assert r["tools"] == ["generate", "chat", "embed"], log
    assert not r["generate"].is_error and r["generate"].content[0].text.strip(), log
    assert len(r["embed"].structured_content["embeddings"][0]) == SMOLLM2_EMBEDDING_LENGTH
    assert r["resources"] == ["smollm2"]
    assert "Traceback" not in log
