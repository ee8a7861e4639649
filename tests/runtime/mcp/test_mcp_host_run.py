"""``dx run MODEL --mcp``: the terminal agent, driven in tmux with the real engine, SmolLM2 and the fastmcp
peer (tests/support/mcp_peer.py). The policy offers one tool (``write_marker``, under ``ask``) and
``--tool-choice required`` makes the model call it, so the prompts come in a known order; what is
asserted is DX's part: n → refused (the server never saw it, the model is told), y → run,
a → run and not asked again; with no terminal an ``ask`` call is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support.serve_harness import dx_env, engine_binary, wait_for
from support.tools import need

pytestmark = pytest.mark.integration

PEER = Path(__file__).resolve().parents[2] / "support" / "mcp_peer.py"
QUESTION = "[y]es / [n]o / [a]lways for this tool"


def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    markers, calls = tmp_path / "markers", tmp_path / "calls.txt"
    markers.mkdir()
    cfg = tmp_path / "mcp.json"
    cfg.write_text(json.dumps({
        "mcpServers": {"peer": {"command": sys.executable, "args": [str(PEER)],
                                "env": {"PEER_CALLS": str(calls), "PEER_DIR": str(markers)}}},
        "policy": {"default": "deny", "tools": {"peer.write_marker": "ask"}}}))
    return cfg, markers, calls


def audit(home: Path) -> list[tuple[str, str]]:
    log = home / "logs" / "tools.jsonl"
    return [(e["tool"], e["decision"]) for e in map(json.loads, log.read_text().splitlines())] if log.exists() else []


def run_args(gguf: Path, cfg: Path) -> list[str]:
    return [sys.executable, "-m", "dx", "run", str(gguf), "--mcp", str(cfg), "--tool-choice", "required",
            "--tool-rounds", "1", "--max-tokens", "120", "--temperature", "0", "--seed", "7", "--ctx", "2048"]


def test_consent_in_tmux_yes_no_always(tmp_path: Path, smollm2_gguf: Path, request: pytest.FixtureRequest) -> None:
    need("tmux")
    cfg, markers, calls = setup(tmp_path)
    home = tmp_path / "home"
    env = {**dx_env(home, engine_binary(request)), "LANG": "C.UTF-8", "TERM": "xterm-256color"}
    sock = f"dx-run-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
    script = tmp_path / "run.sh"
    script.write_text("exec " + " ".join(f"'{a}'" for a in run_args(smollm2_gguf, cfg)) + "\n")
    subprocess.run([*tmux, "new-session", "-d", "-s", "run", "-x", "200", "-y", "50", "sh", str(script)],
                   env=env, check=True, timeout=30)
    pane = ""

    def screen() -> str:
        nonlocal pane
        pane = subprocess.run([*tmux, "capture-pane", "-p", "-J", "-S", "-2000", "-t", "run"], capture_output=True,
                              text=True, timeout=10).stdout
        return pane

    def keys(*k: str) -> None:
        subprocess.run([*tmux, "send-keys", "-t", "run", *k], check=True, timeout=10)

    try:
        assert wait_for(lambda: ">>> " in screen(), 180, 0.5), pane
        keys("Write a marker file.", "Enter")
        assert wait_for(lambda: screen().count(QUESTION) == 1, 300, 0.5), pane
        assert "dx: peer · write_marker {" in pane  # server, tool and arguments shown before asking
        keys("n", "Enter")
        assert wait_for(lambda: screen().count(">>> ") == 2, 300, 0.5), pane
        assert list(markers.iterdir()) == [] and not calls.exists()  # refused: the server never saw it
        assert audit(home) == [("write_marker", "refused")]

        keys("Write a marker file.", "Enter")
        assert wait_for(lambda: screen().count(QUESTION) == 2, 300, 0.5), pane
        keys("y", "Enter")
        assert wait_for(lambda: screen().count(">>> ") == 3, 300, 0.5), pane
        assert "dx: executed: wrote " in pane and len(list(markers.iterdir())) == 1

        keys("Write a marker file.", "Enter")
        assert wait_for(lambda: screen().count(QUESTION) == 3, 300, 0.5), pane
        keys("a", "Enter")
        assert wait_for(lambda: screen().count(">>> ") == 4, 300, 0.5), pane
        keys("Write a marker file.", "Enter")
        assert wait_for(lambda: screen().count(">>> ") == 5, 300, 0.5), pane
        assert pane.count(QUESTION) == 3  # "always": the fourth call ran without asking
        assert audit(home) == [("write_marker", d) for d in ("refused", "executed", "executed", "executed")]
        assert calls.read_text().split() == ["write_marker"] * 3
        keys("/bye", "Enter")
        assert wait_for(lambda: subprocess.run([*tmux, "has-session", "-t", "run"], capture_output=True,
                                               timeout=10).returncode != 0, 30), pane
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=10)


def test_no_terminal_means_refused(tmp_path: Path, smollm2_gguf: Path, request: pytest.FixtureRequest) -> None:
    cfg, markers, calls = setup(tmp_path)
    home = tmp_path / "home"
    done = subprocess.run([*run_args(smollm2_gguf, cfg), "Write a marker file."], stdin=subprocess.DEVNULL,
                          env=dx_env(home, engine_binary(request)), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "refused: no terminal to ask" in done.stderr
    assert list(markers.iterdir()) == [] and not calls.exists()
    assert audit(home) == [("write_marker", "refused")]


def test_bad_config_and_host_are_one_line(tmp_path: Path, smollm2_gguf: Path) -> None:
    env = {**os.environ, "DX_HOME": str(tmp_path / "home")}
    bad = tmp_path / "bad.json"
    bad.write_text('{"mcpServers": {"s": {"command": "${env:DX_NOT_SET_ANYWHERE}"}}}')
    done = subprocess.run([sys.executable, "-m", "dx", "run", str(smollm2_gguf), "hi", "--mcp", str(bad)],
                          stdin=subprocess.DEVNULL, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "DX_NOT_SET_ANYWHERE" in done.stderr and "Traceback" not in done.stderr
    host = subprocess.run([sys.executable, "-m", "dx", "run", "m", "hi", "--host", "127.0.0.1:9", "--mcp", str(bad)],
                          stdin=subprocess.DEVNULL, env=env, capture_output=True, text=True, timeout=120)
    assert host.returncode != 0 and "not with --host" in host.stderr
