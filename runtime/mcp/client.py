"""An MCP client in DX's own small JSON-RPC 2.0 core: initialize, tools/list, tools/call.

Two transports, as the MCP spec has them:

* stdio — the server is a child process; messages are newline-delimited JSON on its stdin/stdout;
  its stderr is drained (the last lines kept for error messages); on close the whole process
  group is terminated, then killed.
* streamable HTTP — each message is a POST; the answer is JSON or an SSE stream holding it;
  ``Mcp-Session-Id`` from ``initialize`` is sent back on every later request.

Calls on one client are serialised (one in flight), each under a deadline; a message larger than
``max_bytes`` fails the call without being held in memory. Every failure is an ``McpError``
carrying one line. A stdio server found dead (it crashed or exited) at the next ``tools/call`` is
started again once for that call, its tool list read anew; a restart that fails is the call's
``McpError`` (the host feeds it to the model as a tool error).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import IO, Any

from dx import __version__
from dx.mcp import rpc
from dx.mcp.config import ServerConfig

PROTOCOL_VERSION = "2025-06-18"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BYTES = 4 << 20


class McpError(Exception):
    """A call that did not give a result (the server's error, a timeout, an exit, an oversized answer)."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass(frozen=True)
class Tool:
    """One tool a server offers (``tools/list``)."""

    server: str
    name: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool = False
    annotations: dict[str, Any] = field(default_factory=dict)


def _tool(server: str, doc: object) -> Tool | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not doc["name"]:
        return None
    schema = doc.get("inputSchema")
    notes = doc.get("annotations") if isinstance(doc.get("annotations"), dict) else {}
    return Tool(server, doc["name"], str(doc.get("description") or ""),
                schema if isinstance(schema, dict) else {"type": "object"},
                notes.get("readOnlyHint") is True, notes)


class Client:
    """One MCP server's session. ``open()`` starts it and initializes; ``close()`` ends it."""

    def __init__(self, cfg: ServerConfig, *, timeout: float = DEFAULT_TIMEOUT,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.timeout = timeout
        self.start_timeout = timeout  # a restart waits as long as the first start did
        self.max_bytes = max_bytes
        self._ids = itertools.count(1)
        self._call_lock = threading.Lock()
        self._life_lock = threading.Lock()
        self.server_info: dict[str, Any] = {}
        self.tools: list[Tool] = []
        self.restarts = 0
        self._transport: _Stdio | _Http = _Stdio(cfg, max_bytes) if cfg.transport == "stdio" else _Http(cfg, max_bytes)

    def open(self) -> Client:
        self._transport.start()
        try:
            result = self.request("initialize", {
                "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                "clientInfo": {"name": "dx", "version": __version__}})
            if isinstance(result, dict):
                self.server_info = result
                version = result.get("protocolVersion")
                if isinstance(version, str) and isinstance(self._transport, _Http):
                    self._transport.protocol_version = version
            self._transport.send(rpc.notification("notifications/initialized"), self.timeout)
        except BaseException:
            self.close()
            raise
        return self

    def request(self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """One JSON-RPC request -> its ``result`` (an ``error`` answer is an ``McpError``)."""
        msg_id = next(self._ids)
        msg = rpc.request(msg_id, method, params)
        with self._call_lock:
            answer = self._transport.call(msg, timeout or self.timeout)
        if "error" in answer:
            err = answer["error"]
            text = err.get("message") if isinstance(err, dict) else err
            raise McpError(f"{self.name}: {method} failed: {str(text)[:300]}")
        return answer.get("result")

    def list_tools(self) -> list[Tool]:
        tools: list[Tool] = []
        cursor: str | None = None
        for _page in range(100):
            result = self.request("tools/list", {"cursor": cursor} if cursor else {})
            if not isinstance(result, dict):
                raise McpError(f"{self.name}: tools/list answered no object")
            tools += [t for t in (_tool(self.name, d) for d in result.get("tools") or []) if t is not None]
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                break
        self.tools = tools
        return tools

    def call_tool(self, name: str, arguments: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """``tools/call`` -> the result (``content``, ``isError``...); a dead stdio server is restarted first."""
        self._revive_if_dead(name)
        result = self.request("tools/call", {"name": name, "arguments": arguments}, timeout)
        if not isinstance(result, dict):
            raise McpError(f"{self.name}: tools/call {name} answered no object")
        return result

    def _revive_if_dead(self, tool: str) -> None:
        """A stdio server that crashed or exited since the last call: start it once more, re-read its tools.

        One try per call, under the lock, so two calls at once start it only once. The restart runs
        with the first start's deadline; if it fails, the call fails with one line saying why.
        """
        with self._life_lock:
            old = self._transport
            if not isinstance(old, _Stdio) or not old.exited():
                return
            why = old.exit_reason()
            old.close()
            print(f"dx: MCP server {self.name!r} is gone ({why}); restarting it", file=sys.stderr, flush=True)
            self._transport = _Stdio(self.cfg, self.max_bytes)
            call_timeout, self.timeout = self.timeout, self.start_timeout
            try:
                self.open()
                listed = self.list_tools()
            except McpError as exc:
                print(f"dx: MCP server {self.name!r} did not restart: {exc}", file=sys.stderr, flush=True)
                raise McpError(f"{self.name}: the server is gone ({why}) and did not restart: {exc}") from None
            finally:
                self.timeout = call_timeout
            self.restarts += 1
            print(f"dx: MCP server {self.name!r} restarted ({len(listed)} tools)", file=sys.stderr, flush=True)
        if tool not in {t.name for t in listed}:
            raise McpError(f"{self.name}: restarted, and it no longer offers the tool {tool!r}")

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def result_text(result: dict[str, Any]) -> str:
    """A ``tools/call`` result as the text a model reads (text items joined; other kinds named)."""
    parts = []
    for item in result.get("content") or []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "text":
            parts.append(str(item.get("text", "")))
        elif kind == "resource" and isinstance(item.get("resource"), dict) and "text" in item["resource"]:
            parts.append(str(item["resource"]["text"]))
        else:
            parts.append(f"[{kind} content: {item.get('mimeType') or 'not shown'}]")
    if not parts and "structuredContent" in result:
        parts.append(json.dumps(result["structuredContent"], ensure_ascii=False))
    return "\n".join(parts)


# ------------------------------------------------------------------ stdio
class _Stdio:
    def __init__(self, cfg: ServerConfig, max_bytes: int) -> None:
        self.cfg = cfg
        self.max_bytes = max_bytes
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: deque[str] = deque(maxlen=20)
        self._answers: dict[int, dict[str, Any]] = {}
        self._oversized = False
        self._cond = threading.Condition()
        self._eof = False
        self._write_lock = threading.Lock()
        self._readers: list[threading.Thread] = []

    def start(self) -> None:
        env = {**os.environ, **self.cfg.env}
        try:
            self.proc = subprocess.Popen(
                [self.cfg.command or "", *self.cfg.args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=env, cwd=self.cfg.cwd, start_new_session=True)
        except OSError as exc:
            raise McpError(f"{self.cfg.name}: cannot start {self.cfg.command!r}: {exc.strerror or exc}") from None
        self._readers = [threading.Thread(target=self._read, name=f"mcp-{self.cfg.name}-out", daemon=True),
                         threading.Thread(target=self._drain, name=f"mcp-{self.cfg.name}-err", daemon=True)]
        for t in self._readers:
            t.start()

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        err = self.proc.stderr
        while raw := _readline(err, 8192):
            line = raw.decode("utf-8", "replace").strip()
            if line:
                self._stderr.append(line)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        out = self.proc.stdout
        while True:
            line = _readline(out, self.max_bytes + 1)
            if not line:
                break
            if len(line) > self.max_bytes and not line.endswith(b"\n"):
                while True:  # skip the rest of the oversized message without keeping it
                    rest = _readline(out, 1 << 20)
                    if not rest or rest.endswith(b"\n"):
                        break
                with self._cond:
                    self._oversized = True
                    self._cond.notify_all()
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # a stray line (a server logging to stdout): not a message
            if not isinstance(msg, dict):
                continue
            if "method" in msg:
                if "id" in msg:  # a request from the server (ping, roots/list...): answer it
                    reply = rpc.result(msg["id"], {}) if msg["method"] == "ping" else \
                        rpc.error(msg["id"], rpc.RPCError(rpc.METHOD_NOT_FOUND, "not supported by dx"))
                    with contextlib.suppress(McpError):
                        self.send(reply, 5.0)
                continue
            if isinstance(msg.get("id"), int):
                with self._cond:
                    self._answers[msg["id"]] = msg
                    self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def exited(self) -> bool:
        """Has the server gone (its process ended, or its stdout closed)?"""
        if self.proc is None:
            return False  # never started: nothing to restart
        with self._cond:
            eof = self._eof
        return eof or self.proc.poll() is not None

    def exit_reason(self) -> str:
        """How it went, for a log line: the exit code and its last stderr line."""
        code = self.proc.poll() if self.proc is not None else None
        last = f": {self._stderr[-1][:200]}" if self._stderr else ""
        return f"exit code {code}{last}" if code is not None else f"its output closed{last}"

    def _exited(self) -> str:
        code = self.proc.poll() if self.proc is not None else None
        if code is None and self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(0.5)
        last = f": {self._stderr[-1][:200]}" if self._stderr else ""
        return f"{self.cfg.name}: the server exited (code {code}){last}"

    def send(self, msg: dict[str, Any], timeout: float) -> None:
        if self.proc is None or self.proc.stdin is None:
            raise McpError(f"{self.cfg.name}: not started")
        data = rpc.encode(msg)
        try:
            with self._write_lock:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise McpError(self._exited()) from None

    def call(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        with self._cond:
            self._oversized = False
        self.send(msg, timeout)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if msg["id"] in self._answers:
                    return self._answers.pop(msg["id"])
                if self._oversized:
                    self._oversized = False
                    raise McpError(f"{self.cfg.name}: the answer to {msg['method']} is larger than "
                                   f"{self.max_bytes} bytes: not read")
                if self._eof:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise McpError(f"{self.cfg.name}: no answer to {msg['method']} within {timeout:g} s",
                                   timeout=True)
                self._cond.wait(left)
        raise McpError(self._exited())

    def close(self) -> None:
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(1.0)
        except subprocess.TimeoutExpired:
            for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything the server left behind in its group
        # The readers end at EOF now that the group is gone; a pipe is closed only once its reader
        # has ended (closing a file another thread is reading from makes that read fail, not end).
        for reader, stream in zip(self._readers, (proc.stdout, proc.stderr), strict=False):
            reader.join(2.0)
            if stream is not None and not reader.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    stream.close()


def _readline(stream: IO[bytes], limit: int) -> bytes:
    """One line of at most ``limit`` bytes; b"" at EOF or once the pipe is closed under the reader."""
    try:
        return stream.readline(limit)
    except (OSError, ValueError):
        return b""


# ------------------------------------------------------------------ streamable HTTP
class _Http:
    def __init__(self, cfg: ServerConfig, max_bytes: int) -> None:
        self.cfg = cfg
        self.max_bytes = max_bytes
        self.session: str | None = None
        self.protocol_version: str | None = None

    def start(self) -> None:
        pass

    def _post(self, msg: dict[str, Any], timeout: float) -> Any:
        headers = {**self.cfg.headers, "Content-Type": "application/json",
                   "Accept": "application/json, text/event-stream"}
        if self.session:
            headers["Mcp-Session-Id"] = self.session
        if self.protocol_version:
            headers["MCP-Protocol-Version"] = self.protocol_version
        request = urllib.request.Request(self.cfg.url or "", rpc.encode(msg), headers, method="POST")
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            body = exc.read(2000).decode("utf-8", "replace").strip()
            exc.close()
            raise McpError(f"{self.cfg.name}: {msg.get('method')} answered HTTP {exc.code}"
                           f"{': ' + body[:200] if body else ''}") from None
        except TimeoutError:
            raise McpError(f"{self.cfg.name}: no answer to {msg.get('method')} within {timeout:g} s",
                           timeout=True) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise McpError(f"{self.cfg.name}: cannot reach {self.cfg.url}: {reason}") from None

    def send(self, msg: dict[str, Any], timeout: float) -> None:
        with self._post(msg, timeout) as resp:
            resp.read(65536)

    def call(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        try:
            with self._post(msg, timeout) as resp:
                sid = resp.headers.get("Mcp-Session-Id")
                if sid and msg.get("method") == "initialize":
                    self.session = sid
                kind = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                if kind == "text/event-stream":
                    return self._from_sse(resp, msg, deadline, timeout)
                raw = resp.read(self.max_bytes + 1)
        except TimeoutError:
            raise McpError(f"{self.cfg.name}: no answer to {msg.get('method')} within {timeout:g} s",
                           timeout=True) from None
        except OSError as exc:
            raise McpError(f"{self.cfg.name}: the answer to {msg.get('method')} broke off ({exc})") from None
        if len(raw) > self.max_bytes:
            raise McpError(f"{self.cfg.name}: the answer to {msg['method']} is larger than {self.max_bytes} bytes: "
                           "not read")
        return self._answer(raw, msg)

    def _answer(self, raw: bytes, msg: dict[str, Any]) -> dict[str, Any]:
        try:
            doc = json.loads(raw)
        except ValueError:
            raise McpError(f"{self.cfg.name}: the answer to {msg['method']} is not JSON") from None
        for one in doc if isinstance(doc, list) else [doc]:
            if isinstance(one, dict) and one.get("id") == msg["id"]:
                return one
        raise McpError(f"{self.cfg.name}: no answer to {msg['method']} in the server's reply")

    def _from_sse(self, resp: Any, msg: dict[str, Any], deadline: float, timeout: float) -> dict[str, Any]:
        data: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise McpError(f"{self.cfg.name}: no answer to {msg['method']} within {timeout:g} s", timeout=True)
            line = resp.readline(self.max_bytes + 1)
            if not line:
                raise McpError(f"{self.cfg.name}: the stream ended with no answer to {msg['method']}")
            size += len(line)
            if size > self.max_bytes:
                raise McpError(f"{self.cfg.name}: the answer to {msg['method']} is larger than {self.max_bytes} "
                               "bytes: not read")
            line = line.rstrip(b"\r\n")
            if line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" "))
            elif not line and data:
                payload = b"\n".join(data)
                data, size = [], 0
                try:
                    doc = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(doc, dict) and doc.get("id") == msg["id"] and "method" not in doc:
                    return doc

    def close(self) -> None:
        if not self.session:
            return
        headers = {**self.cfg.headers, "Mcp-Session-Id": self.session}
        request = urllib.request.Request(self.cfg.url or "", headers=headers, method="DELETE")
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(request, timeout=2.0):
            pass
        self.session = None
