"""The MCP host works from a minted executable, not only from the pip-installed ``dx``:

* ``./dx-smollm2-cpu-linux-<arch> serve --mcp mcp.json --allow-tools time.get_current_time`` with real
  stdio MCP servers (``mcp-server-time`` from PyPI, the fastmcp peer of tests/support/mcp_peer.py),
  driven by the real ``ollama`` and ``openai`` clients with auth on: the allowed call runs and the
  answer carries its result, the audit log has it, a tool the operator did not allow comes back as
  ``tool_calls`` unrun, and a request without the key is refused;
* ``./dx-smollm2-… run --mcp mcp.json "PROMPT"`` on a pseudo-terminal (the consent question is asked
  only on a terminal): ``n`` → the call is refused and the server never sees it, ``y`` → it runs and
  its result is shown;
* every ``dx.mcp`` module is in the compiled runtime (a module Nuitka left out is the usual way a
  feature works under pip and fails in the executable).

What a 135M model decides is not asserted: a call is forced with a named ``tool_choice`` (openai) or
``--tool-choice required`` with one tool offered (dx run); greedy sampling with a fixed seed makes
the ollama client's call repeatable. Uses the session fixture ``minted_smollm2`` (a real ``dxbuild``
mint; a changed runtime rebuilds the Nuitka bundle once, minutes).
"""

from __future__ import annotations

import datetime
import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.minted_server import MintedServer, fresh_env, start_minted

pytestmark = pytest.mark.integration

MODEL = "smollm2"
PEER = Path(__file__).resolve().parents[1] / "support" / "mcp_peer.py"
TIME_SERVER = str(Path(sys.executable).parent / "mcp-server-time")
RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
QUESTION = "[y]es / [n]o / [a]lways for this tool"


def peer_files(where: Path) -> dict[str, Path]:
    (where / "markers").mkdir(parents=True)
    return {"calls": where / "calls.txt", "markers": where / "markers"}


def peer_calls(peer: dict[str, Path]) -> list[str]:
    return peer["calls"].read_text().split() if peer["calls"].exists() else []


def write_config(where: Path, peer: dict[str, Path], *, with_time: bool) -> Path:
    """Only the tools a test needs are offered (the rest denied): a short prompt for a slow CPU."""
    servers: dict[str, dict] = {"peer": {"command": sys.executable, "args": [str(PEER)],
                                         "env": {"PEER_CALLS": str(peer["calls"]), "PEER_DIR": str(peer["markers"])}}}
    if with_time:
        servers["time"] = {"command": TIME_SERVER, "args": ["--local-timezone", "UTC"]}
    doc = {"mcpServers": servers, "policy": {"default": "deny", "tools": {"peer.write_marker": "ask"}}}
    p = where / "mcp.json"
    p.write_text(json.dumps(doc))
    return p


def audit(home: Path) -> list[dict]:
    log = home / ".dx" / "logs" / "tools.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


# --------------------------------------------------------------------------- dx serve --mcp
@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return peer_files(tmp_path_factory.mktemp("serve-peer"))


@pytest.fixture(scope="module")
def served(minted_smollm2: Path, tmp_path_factory: pytest.TempPathFactory,
           peer: dict[str, Path]) -> Iterator[MintedServer]:
    tmp = tmp_path_factory.mktemp("mint-mcp-serve")
    cfg = write_config(tmp, peer, with_time=True)
    server = start_minted(minted_smollm2, tmp / "home", "--mcp", str(cfg), "--allow-tools", "time.get_current_time",
                          "--tool-rounds", "1", "--tool-timeout", "30", "--ctx", "2048")
    yield server
    server.stop()
    assert not [line for line in server.lines if "Traceback" in line], "\n".join(server.lines)


def test_serve_banner_says_who_decides_each_tool(served: MintedServer) -> None:
    banner = next(line for line in served.lines if "MCP tools" in line)
    assert "time.get_current_time (dx runs)" in banner
    assert "peer.write_marker (returned to the client)" in banner
    assert "peer.echo (denied)" in banner


def test_serve_tools_need_the_key(served: MintedServer, peer: dict[str, Path]) -> None:
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "Write a marker."}], "stream": False}
    for path in ("/api/chat", "/v1/chat/completions"):
        r = httpx.post(served.url + path, json=ask, timeout=60)
        assert r.status_code == 401, (path, r.text)
    assert peer_calls(peer) == []


def test_serve_refuses_mcp_without_auth(minted_smollm2: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, peer_files(tmp_path), with_time=False)
    done = subprocess.run([str(minted_smollm2), "serve", "--no-auth", "--mcp", str(cfg)], cwd=tmp_path,
                          env={**fresh_env(tmp_path / "home"), "DX_PORT": "0"}, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "--mcp with --no-auth" in done.stderr and "--allow-tools-without-auth" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_allowed_call_runs_and_the_answer_carries_its_result(served: MintedServer) -> None:
    """The ollama client asks the time; DX runs time.get_current_time; the answer has today's UTC date,
    which only the tool's result could have given the model."""
    before = len(audit(served.home))
    days = {datetime.datetime.now(datetime.timezone.utc).date().isoformat()}
    client = served.ollama(timeout=900)
    r = client.chat(model=MODEL, messages=[{"role": "user", "content": "What time is it in UTC?"}],
                    options={"temperature": 0, "seed": 7, "num_predict": 60})
    days.add(datetime.datetime.now(datetime.timezone.utc).date().isoformat())
    assert not r.message.tool_calls  # the call was DX's to run: none goes back to the client
    ran = [e for e in audit(served.home)[before:] if e["tool"] == "get_current_time"]
    assert ran, r.message.content
    assert ran[0]["server"] == "time" and ran[0]["decision"] == "executed" and ran[0]["model"] == MODEL
    assert ran[0]["result_bytes"] > 0 and len(ran[0]["arguments_sha256"]) == 64 and ran[0]["key"] != "none"
    assert served.api_key not in (served.home / ".dx" / "logs" / "tools.jsonl").read_text()
    assert any(day in (r.message.content or "") for day in days), r.message.content
    metrics = httpx.get(f"{served.url}/metrics", headers=served.headers, timeout=60).text
    assert any(line.startswith("dx_tool_calls_total{") and 'tool="get_current_time"' in line
               and 'decision="executed"' in line for line in metrics.splitlines()), metrics


def test_serve_call_not_allowed_goes_back_to_the_client_unrun(served: MintedServer, peer: dict[str, Path]) -> None:
    before = len(audit(served.home))
    oai = served.openai(timeout=900)
    r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Write a marker."}],
                                    tool_choice={"type": "function", "function": {"name": "peer__write_marker"}},
                                    temperature=0, seed=7, max_tokens=60)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls or []] == ["peer__write_marker"]
    assert "write_marker" not in peer_calls(peer)  # the server never saw it
    assert list(peer["markers"].iterdir()) == []
    assert [(e["tool"], e["decision"]) for e in audit(served.home)[before:]] == [("write_marker", "returned")]


# --------------------------------------------------------------------------- dx run --mcp
def run_on_a_terminal(exe: Path, home: Path, cfg: Path, answer: str, timeout: float = 900) -> tuple[int, str]:
    """``EXE run --mcp CFG PROMPT`` with a pty for stdin/stdout/stderr; ``answer`` typed at the question.

    Returns the exit status and everything the terminal showed."""
    main, sub = pty.openpty()
    args = [str(exe), "run", "--mcp", str(cfg), "Write a marker file.", "--tool-choice", "required",
            "--tool-rounds", "1", "--max-tokens", "60", "--temperature", "0", "--seed", "7", "--ctx", "2048"]
    proc = subprocess.Popen(args, cwd=home, env={**fresh_env(home), "TERM": "dumb"}, stdin=sub, stdout=sub,
                            stderr=sub, close_fds=True)
    os.close(sub)
    shown, answered = b"", False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk and proc.poll() is not None:
                    break
                shown += chunk
            elif proc.poll() is not None:
                break
            if not answered and QUESTION.encode() in shown:
                os.write(main, answer.encode() + b"\r")
                answered = True
        else:
            raise AssertionError("dx run did not finish:\n" + shown.decode(errors="replace"))
        return proc.wait(timeout=30), shown.decode(errors="replace").replace("\r\n", "\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)


def test_run_answer_no_refuses_the_call(minted_smollm2: Path, tmp_path: Path) -> None:
    peer = peer_files(tmp_path)
    home = tmp_path / "home"
    rc, screen = run_on_a_terminal(minted_smollm2, home, write_config(tmp_path, peer, with_time=False), "n")
    assert rc == 0, screen
    assert "with MCP tools: peer.write_marker" in screen
    assert "dx: peer · write_marker {" in screen and screen.count(QUESTION) == 1  # shown before asking
    assert "dx: executed" not in screen
    assert peer_calls(peer) == [] and list(peer["markers"].iterdir()) == []  # the server never saw it
    assert [(e["tool"], e["decision"]) for e in audit(home)] == [("write_marker", "refused")]
    assert "Traceback" not in screen


def test_run_answer_yes_runs_it_and_shows_the_result(minted_smollm2: Path, tmp_path: Path) -> None:
    peer = peer_files(tmp_path)
    home = tmp_path / "home"
    rc, screen = run_on_a_terminal(minted_smollm2, home, write_config(tmp_path, peer, with_time=False), "y")
    assert rc == 0, screen
    assert screen.count(QUESTION) == 1
    assert "dx: executed: wrote " in screen  # the result, shown
    assert peer_calls(peer) == ["write_marker"] and len(list(peer["markers"].iterdir())) == 1
    assert [(e["tool"], e["decision"]) for e in audit(home)] == [("write_marker", "executed")]
    assert "Traceback" not in screen


# --------------------------------------------------------------------------- the compiled runtime
def test_every_mcp_module_is_compiled_in(minted_smollm2: Path, tmp_path: Path) -> None:
    """Each ``dx.mcp`` module (and the CLI and server modules that use them) is named in the unpacked
    runtime binary; the tests above run their code."""
    home = tmp_path / "home"
    done = subprocess.run([str(minted_smollm2), "--help"], env=fresh_env(home), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    binaries = list((home / ".cache" / "dx" / "run").glob("*/dx.bin"))
    assert len(binaries) == 1, binaries
    data = binaries[0].read_bytes()
    wanted = ["dx.mcp"] + [f"dx.mcp.{p.stem}" for p in sorted((RUNTIME / "mcp").glob("*.py"))
                           if p.stem != "__init__"]
    wanted += ["dx.cli.agent", "dx.cli.mcp", "dx.server.tool_loop", "dx.server.mcp_http"]
    assert len(wanted) > 8
    missing = [m for m in wanted if m.encode() + b"\0" not in data]
    assert missing == [], f"not in the compiled runtime: {missing}"
