#!/usr/bin/env python3
"""Benchmark: what DX Connect costs — one tool round trip through DX against the MCP server called
directly, and dx serve's idle memory with and without ``--mcp``.

1. Round trip: ``mcp-server-time`` (the reference server, stdio) is called N times for
   ``get_current_time`` by DX's host (``dx.mcp.toolbox.Toolbox.run``: JSON-schema check, the call
   over DX's own JSON-RPC client, one audit line) and by the official ``mcp`` SDK's
   ``ClientSession.call_tool`` (the same server, no policy, no audit). Prints p50/p95 in ms and
   the ratio DX / SDK.
2. Idle RSS: ``dx serve MODEL`` started twice, without and with ``--mcp`` (that time server, allowed),
   each left idle for a few seconds: dx's own VmRSS and the MCP server child's, in MiB.

The executable's size with and without the MCP parts needs two Nuitka builds; it is
``bench_mint.py``'s job (the figure for this change is in the README). Asserts nothing; on a
shared machine the numbers move with the neighbours' load.

    python tests/bench/bench_mcp.py [--calls N] [--model GGUF] [--engine llama-server] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers in support/

from bench_runtime import rss_mb
from support.serve_harness import start_dx

TIME_ARGS = {"timezone": "UTC"}


def _time_server() -> list[str]:
    exe = shutil.which("mcp-server-time") or str(Path(sys.executable).with_name("mcp-server-time"))
    if not Path(exe).exists():
        sys.exit("mcp-server-time is not installed: python3 -m pip install -e '.[test]'")
    return [exe, "--local-timezone", "UTC"]


def _config(where: Path) -> Path:
    cmd = _time_server()
    doc = {"mcpServers": {"time": {"command": cmd[0], "args": cmd[1:]}}, "policy": {"tools": {"time.*": "allow"}}}
    path = where / "mcp.json"
    path.write_text(json.dumps(doc))
    return path


def through_dx(config: Path, calls: int) -> list[float]:
    from dx.mcp import config as mcp_config
    from dx.mcp.toolbox import Toolbox, exposed_name

    box = Toolbox(mcp_config.load(config)).open()
    try:
        bound = box.tools[exposed_name("time", "get_current_time")]
        args = json.dumps(TIME_ARGS)
        box.run(bound, args, key="bench", model="none")  # warm
        out = []
        for _ in range(calls):
            t0 = time.perf_counter()
            outcome = box.run(bound, args, key="bench", model="none")
            out.append((time.perf_counter() - t0) * 1000)
            if outcome.is_error:
                sys.exit(f"the call failed through DX: {outcome.text}")
        return out
    finally:
        box.close()


def through_sdk(calls: int) -> list[float]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    cmd = _time_server()

    async def go() -> list[float]:
        async with stdio_client(StdioServerParameters(command=cmd[0], args=cmd[1:])) as (r, w), \
                ClientSession(r, w) as session:
            await session.initialize()
            await session.call_tool("get_current_time", TIME_ARGS)  # warm
            out = []
            for _ in range(calls):
                t0 = time.perf_counter()
                result = await session.call_tool("get_current_time", TIME_ARGS)
                out.append((time.perf_counter() - t0) * 1000)
                if result.is_error:
                    sys.exit("the call failed through the SDK")
            return out

    return asyncio.run(go())


def _children(pid: int) -> list[tuple[int, str]]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                kids.append((int(entry), Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, ValueError):
            continue
    return kids


def idle_rss(tmp: Path, model: Path, engine: Path | None, extra: list[str], settle: float) -> dict[str, float]:
    server = start_dx(tmp, "--keep-alive", "-1", "--ctx", "1024", *extra, engine=engine, model=str(model),
                      timeout=120)
    try:
        time.sleep(settle)
        pid = server.proc.pid
        out = {"dx": rss_mb(pid)}
        for kid, cmd in _children(pid):
            if "mcp-server-time" in cmd:
                out["mcp-server-time"] = rss_mb(kid) + sum(rss_mb(k) for k, _ in _children(kid))
        return out
    finally:
        server.stop()


def _stats(ms: list[float]) -> tuple[float, float]:
    ms = sorted(ms)
    return statistics.median(ms), ms[max(0, int(len(ms) * 0.95) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--engine", type=Path)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds idle before RSS is read")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.model is None:
        from dxbuild.models import resolve

        a.model = Path(resolve("smollm2").path)
    if a.engine is None:
        from dxbuild.engine.build import host_engine

        a.engine = host_engine("cpu") / "bin" / "llama-server"
    with tempfile.TemporaryDirectory(prefix="dx-bench-mcp-") as t:
        tmp = Path(t)
        os.environ["DX_HOME"] = str(tmp / "home")  # the audit log goes there
        config = _config(tmp)
        dx_ms, sdk_ms = through_dx(config, a.calls), through_sdk(a.calls)
        (dx50, dx95), (sdk50, sdk95) = _stats(dx_ms), _stats(sdk_ms)
        plain = idle_rss(tmp / "plain", a.model, a.engine, [], a.settle)
        with_mcp = idle_rss(tmp / "mcp", a.model, a.engine, ["--mcp", str(config)], a.settle)
    print(f"one get_current_time call to mcp-server-time (stdio), {a.calls} calls, ms")
    print(f"  {'':28}{'p50':>8}{'p95':>8}")
    print(f"  {'DX host (check+call+audit)':28}{dx50:8.2f}{dx95:8.2f}")
    print(f"  {'mcp SDK ClientSession':28}{sdk50:8.2f}{sdk95:8.2f}")
    print(f"  {'ratio DX / SDK':28}{dx50 / sdk50:8.2f}{dx95 / sdk95:8.2f}")
    print("idle RSS of dx serve (MiB; the engine is a separate process, not counted)")
    print(f"  dx serve                    {plain['dx']:8.1f}")
    print(f"  dx serve --mcp              {with_mcp['dx']:8.1f}   ({with_mcp['dx'] - plain['dx']:+.1f})")
    if "mcp-server-time" in with_mcp:
        print(f"  its mcp-server-time child   {with_mcp['mcp-server-time']:8.1f}   (the operator's server, not DX)")
    if a.json:
        a.json.write_text(json.dumps({"dx_ms": [dx50, dx95], "sdk_ms": [sdk50, sdk95], "idle_rss_mib": {
            "plain": plain, "mcp": with_mcp}}, indent=2))


if __name__ == "__main__":
    main()
