"""The npm ``ollama`` client (ollama-js, installed once into the DX cache) against the minted executable
with its key: a chat with a tool comes back as a parsed tool call, streamed too."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support.minted_server import MODEL, MintedServer
from support.peers import npm_ollama
from support.tools import need

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("ollama_js_tools.cjs")


def test_npm_ollama_chat_with_tools(dx: MintedServer) -> None:
    node = need("node", package="nodejs")
    modules = npm_ollama() / "node_modules"
    res = subprocess.run([node, str(SCRIPT), dx.url, dx.api_key, MODEL], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "NODE_PATH": str(modules)})
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["tool_calls"], out
    call = out["tool_calls"][0]["function"]
    assert call["name"] == "get_weather" and isinstance(call["arguments"], dict), call  # arguments: an object
    assert isinstance(call["arguments"].get("city"), str), call
    assert [c["function"]["name"] for c in out["streamed_tool_calls"]] == ["get_weather"], out
    assert out["after_tool"]["content"] or out["after_tool"]["tool_calls"], out
    assert any(name.split(":")[0] == MODEL for name in out["models"]), out
