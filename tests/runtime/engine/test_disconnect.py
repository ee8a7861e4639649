"""A request nobody waits for stops: a client that hangs up mid-answer frees the engine's slot at once.

Real engine, real SmolLM2, auth on. Each test starts a long answer on a raw socket, closes the socket
(a stream after its first bytes; a non-streaming request while the engine decodes it) and then watches
the engine's own ``/slots`` (through dx: the default model's engine) until no slot is processing.
llama-server looks at a closed connection once a second (HTTP_POLLING_SECONDS), so "within a second"
of dx closing its engine connection, plus one decode step.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from pathlib import Path

import httpx
import pytest
from support.serve_harness import DXServer, engine_binary, serve_model, start_dx, wait_for

pytestmark = pytest.mark.integration

MODEL = "smollm2:135m"
LONG = {"num_predict": 2000, "temperature": 0}  # greedy SmolLM2 counts on to the limit (at 1 it may stop at once)
COUNT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # SmolLM2 goes on counting: an answer that does not end by itself
ASK = [{"role": "user", "content": "Count from 1 to 2000, separated by commas, and say nothing else."}]
# from the close to the slot released, plus three decode steps (measured: a loaded machine decodes slowly)
IDLE_DEADLINE = float(os.environ.get("DX_TEST_IDLE_DEADLINE", "1.5"))
MEASURED: dict[str, float] = {}
STEPS: dict[str, float] = {}


@pytest.fixture(scope="module")
def dx(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("disconnect")
    server = serve_model(tmp, smollm2_gguf, MODEL, "--ctx", "4096", engine=engine_binary(request))
    assert server.api_key  # auth on, as a user runs it
    yield server
    server.stop()
    if MEASURED:
        print("\nclose -> slot released:", ", ".join(f"{k} {v:.2f}s ({STEPS[k] * 1000:.0f} ms/token)"
                                                  for k, v in MEASURED.items()))


def _slots(dx: DXServer, client: httpx.Client) -> list[dict]:
    r = client.get(f"{dx.url}/slots", headers=dx.headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _decoding(slots: list[dict]) -> bool:
    return any(s.get("is_processing") and (s.get("next_token") or [{}])[0].get("n_decoded", 0) > 0 for s in slots)


def _send(dx: DXServer, path: str, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", dx.port), timeout=120)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{dx.port}\r\nAuthorization: Bearer {dx.api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
    )
    return sock


def _token_time(dx: DXServer, client: httpx.Client) -> float:
    """Seconds per decoded token now (the machine may be loaded): from the slot's own count."""
    def decoded() -> int:
        return max((s.get("next_token") or [{}])[0].get("n_decoded", 0) for s in _slots(dx, client))

    t0, n0 = time.monotonic(), decoded()
    time.sleep(0.3)
    n1 = decoded()
    while n1 == n0 and time.monotonic() - t0 < 10:
        time.sleep(0.05)
        n1 = decoded()
    return (time.monotonic() - t0) / max(1, n1 - n0)


def _first_bytes(sock: socket.socket) -> bytes:
    """The head and the first piece of the body: the stream is flowing."""
    got = b""
    while b"\r\n\r\n" not in got or len(got.partition(b"\r\n\r\n")[2]) < 8:
        block = sock.recv(4096)
        assert block, got
        got += block
    return got


def _releases(dx: DXServer) -> int:
    """How many tasks the generation engine has released, from its log: watching costs the engine nothing.

    (Polling /slots after the close would hold the cancel back: llama-server checks a closed
    connection only when a second passes with no result of any task, and each /slots is one.)
    """
    [log] = [p for p in (dx.home / "logs").glob("engine-*.log") if "-embed" not in p.name]
    return log.read_text(errors="replace").count("stop processing")


def _hang_up_and_time(dx: DXServer, name: str, path: str, body: dict, stream: bool,
                      allowed: float | None = None) -> float:
    """Start the answer, walk away from it, and time the engine's release of its slot; returns that time.

    ``allowed``: seconds (plus three decode steps) the release may take; by default IDLE_DEADLINE.
    """
    with httpx.Client() as client:
        assert not any(s.get("is_processing") for s in _slots(dx, client)), "an earlier answer still runs"
        released = _releases(dx)
        sock = _send(dx, path, body)
        if stream:
            head = _first_bytes(sock)
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
        deadline = time.monotonic() + 120
        while not _decoding(_slots(dx, client)):  # the engine is generating this answer now
            assert time.monotonic() < deadline, "the engine never started decoding"
            time.sleep(0.05)
        step = _token_time(dx, client)
        if not stream:
            time.sleep(0.5)
            assert _decoding(_slots(dx, client)), "the answer ended before the test could walk away from it"
        # a second for the engine to look at its connection, and a few decode steps: it cancels between two
        allowed = (IDLE_DEADLINE if allowed is None else allowed) + 3 * step
        sock.close()
        closed = time.monotonic()
        while _releases(dx) == released:
            took = time.monotonic() - closed
            assert took < max(IDLE_DEADLINE, 1.5) + 60, "the engine kept generating for nobody"
            time.sleep(0.02)
        took = time.monotonic() - closed
        MEASURED[name] = took
        STEPS[name] = step
        assert took < allowed, f"{name}: the slot was freed {took:.2f}s after the client left ({step:.3f}s/token)"
        assert not any(s.get("is_processing") for s in _slots(dx, client))
        metrics = client.get(f"{dx.url}/metrics", headers=dx.headers, timeout=30).text
        busy = [line for line in metrics.splitlines() if "requests_processing" in line and not line.startswith("#")]
        assert all(float(line.rsplit(" ", 1)[1]) == 0 for line in busy), busy
    return took


def test_generate_stream(dx: DXServer) -> None:
    _hang_up_and_time(dx, "generate stream", "/api/generate",
                      {"model": MODEL, "prompt": COUNT, "raw": True, "options": LONG}, stream=True)


def test_generate_no_stream(dx: DXServer) -> None:
    _hang_up_and_time(dx, "generate", "/api/generate",
                      {"model": MODEL, "prompt": COUNT, "raw": True, "stream": False, "options": LONG}, stream=False)


def test_chat_no_stream(dx: DXServer) -> None:
    _hang_up_and_time(dx, "chat", "/api/chat",
                      {"model": MODEL, "messages": ASK, "stream": False, "options": LONG}, stream=False)


def test_chat_stream(dx: DXServer) -> None:
    _hang_up_and_time(dx, "chat stream", "/api/chat", {"model": MODEL, "messages": ASK, "options": LONG}, stream=True)


_OAI = {"model": MODEL, "messages": ASK, "max_tokens": 2000, "temperature": 1.0, "seed": 3,
        "ignore_eos": True}  # llama-server's own field, relayed as is: the answer cannot end early


def test_openai_chat_stream(dx: DXServer) -> None:
    _hang_up_and_time(dx, "v1 chat stream", "/v1/chat/completions", {**_OAI, "stream": True}, stream=True)


def test_openai_chat_no_stream(dx: DXServer) -> None:
    _hang_up_and_time(dx, "v1 chat", "/v1/chat/completions", {**_OAI, "stream": False}, stream=False)


def test_openai_completions_no_stream(dx: DXServer) -> None:
    _hang_up_and_time(dx, "v1 completions", "/v1/completions",
                      {"model": MODEL, "prompt": COUNT, "max_tokens": 2000, "temperature": 1.0,
                       "ignore_eos": True}, stream=False)


def test_passthrough_completion_no_stream(dx: DXServer) -> None:
    """llama.cpp's own /completion, through dx's passthrough to the default model's engine."""
    _hang_up_and_time(dx, "passthrough /completion", "/completion",
                      {"prompt": COUNT, "n_predict": 2000, "temperature": 1.0, "ignore_eos": True}, stream=False)


def test_non_streamed_answers_are_cancelled_well_within_a_second(dx: DXServer) -> None:
    """A non-streaming request waits in the engine for its whole answer and looked at its connection only once
    a second (HTTP_POLLING_SECONDS): a client gone mid-answer kept its slot decoding for up to a second plus a
    decode step after dx closed the engine connection (the soak run's slow slot frees, over its 1 s). The
    engine's waiter looks every 100 ms now (patch 0004). Four hang-ups, at random points of that old second:
    each is released within 0.4 s (+ three decode steps); with the 1 s poll all four would be ~1 in 40."""
    cases = [("/api/generate", {"model": MODEL, "prompt": COUNT, "raw": True, "stream": False, "options": LONG}),
             ("/v1/chat/completions", {**_OAI, "stream": False})] * 2
    for i, (path, body) in enumerate(cases):
        _hang_up_and_time(dx, f"no stream #{i} {path}", path, body, stream=False, allowed=0.4)


def test_a_request_whose_client_left_while_its_engine_loaded_is_not_sent(dx: DXServer) -> None:
    """A request waits in dx while its model's engine loads (or restarts after a crash: the soak run's SIGKILLs);
    a client that leaves meanwhile must not cost a slot once the engine is up. Sent anyway, the engine would
    decode for nobody until it next looked at the connection (up to a second: over the soak's 1 s)."""
    with httpx.Client() as client:
        r = client.post(f"{dx.url}/api/generate", headers=dx.headers, timeout=60, json={"model": MODEL, "keep_alive": 0})
        assert r.status_code == 200, r.text
        assert wait_for(lambda: not client.get(f"{dx.url}/api/ps", headers=dx.headers, timeout=30).json()["models"], 30)
        sock = _send(dx, "/api/generate", {"model": MODEL, "prompt": COUNT, "raw": True, "stream": False,
                                           "options": LONG})
        time.sleep(0.2)  # dx has the request and is starting the engine for it
        sock.close()
        assert wait_for(lambda: _slots_answer(dx, client), 120), "the engine never came up"
        time.sleep(1.5)  # dx has had the engine for a while: the request would be in a slot by now
        [log] = [p for p in (dx.home / "logs").glob("engine-*.log") if "-embed" not in p.name]
        assert "processing task" not in log.read_text(errors="replace"), "the engine got a request nobody waits for"
        assert not any(s.get("is_processing") for s in _slots(dx, client))


def _slots_answer(dx: DXServer, client: httpx.Client) -> bool:
    """The engine is up (dx's /slots passthrough answers 200) and dx is not starting it any more."""
    return client.get(f"{dx.url}/slots", headers=dx.headers, timeout=60).status_code == 200


# ------------------------------------------------------- a stream whose next bytes are far away
# The engine decodes on, but sends nothing: its output is forced ("Hi" then a's, by a grammar) and
# a stop string of a's held back in full (llama-server withholds a possible stop string). So after
# "Hi" no token reaches dx for as long as the answer runs: a relay that noticed a departed client
# only at its next write to it kept the slot busy to the end; it must notice between two chunks.
_HELD = ["a" * 3000 + "b"]
_FORCED = {"type": "string", "pattern": "^Hia{1000,}$"}


def test_chat_stream_with_nothing_to_send(dx: DXServer) -> None:
    _hang_up_and_time(dx, "chat stream, held back", "/api/chat", {
        "model": MODEL, "messages": ASK, "format": _FORCED,
        "options": {**LONG, "stop": _HELD}}, stream=True)


def test_openai_chat_stream_with_nothing_to_send(dx: DXServer) -> None:
    _hang_up_and_time(dx, "v1 chat stream, held back", "/v1/chat/completions", {
        **_OAI, "stream": True, "grammar": 'root ::= "Hi" [a]*', "stop": _HELD}, stream=True)


def test_pipelined_request_during_a_stream_is_not_a_hang_up(dx: DXServer) -> None:
    """A client that sends its next request while its stream runs is still there: the stream ends, then
    the next answer comes (the relay watches the client for a hang-up, not for bytes)."""
    def request(body: dict, close: bool = False) -> bytes:
        data = json.dumps(body).encode()
        last = "Connection: close\r\n" if close else ""  # the server closes after the last answer
        return (f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1:{dx.port}\r\nAuthorization: Bearer {dx.api_key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n{last}\r\n").encode() + data
    with socket.create_connection(("127.0.0.1", dx.port), timeout=120) as sock:
        sock.sendall(request({"model": MODEL, "prompt": COUNT, "raw": True,
                              "options": {"num_predict": 64, "temperature": 0}}))
        got = _first_bytes(sock)  # the stream flows: the next request arrives while it runs
        sock.sendall(request({"model": MODEL, "prompt": "Hi", "stream": False,
                              "options": {"num_predict": 8, "temperature": 0}}, close=True))
        while block := sock.recv(65536):
            got += block
    assert got.count(b"HTTP/1.1 200") == 2, got[-500:]
    assert got.count(b'"done":true') == 2, got[-500:]


def test_pipelined_request_is_not_a_hang_up(dx: DXServer) -> None:
    """A client that already sent its next request is still there: its first answer comes, then the next."""
    one = json.dumps({"model": MODEL, "prompt": "Hi", "stream": False,
                      "options": {"num_predict": 8, "temperature": 0}}).encode()
    req = (f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1:{dx.port}\r\nAuthorization: Bearer {dx.api_key}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(one)}\r\n\r\n").encode() + one
    bodies = []
    with socket.create_connection(("127.0.0.1", dx.port), timeout=120) as sock:
        sock.sendall(req + req)
        got = b""
        while len(bodies) < 2:
            head, sep, rest = got.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None) if sep else None
            if length is not None and len(rest) >= length:
                assert head.startswith(b"HTTP/1.1 200"), head
                bodies.append(json.loads(rest[:length]))
                got = rest[length:]
                continue
            block = sock.recv(65536)
            assert block, got
            got += block
    assert [b["done"] for b in bodies] == [True, True]


def test_a_client_that_stays_gets_its_answer(dx: DXServer) -> None:
    r = httpx.post(f"{dx.url}/api/chat", headers=dx.headers, timeout=300, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False,
        "options": {"num_predict": 8}})
    assert r.status_code == 200 and r.json()["done"] is True


def test_an_error_answer_to_a_client_gone_is_dropped_quietly(dx: DXServer) -> None:
    """A client that left before its error answer: nothing to tell it, nothing for the log (the soak run
    found 'dx: internal error serving …: BrokenPipeError' lines). The answer here is a pull's failure
    (a registry on loopback that accepts, waits for the client to leave, then hangs up); the client
    leaves with a reset (SO_LINGER 0), so dx's write of the error fails at once."""
    with socket.create_server(("127.0.0.1", 0)) as registry:
        registry.settimeout(30)
        sock = _send(dx, "/api/pull", {"model": f"127.0.0.1:{registry.getsockname()[1]}/library/gone:latest",
                                        "insecure": True, "stream": False})
        dx_side, _ = registry.accept()  # dx works on the pull now
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset: the client is gone
        time.sleep(0.3)
        dx_side.close()  # the registry hangs up: dx answers the pull's failure to nobody
    with httpx.Client() as client:  # dx serves on
        assert client.get(f"{dx.url}/api/version", headers=dx.headers, timeout=30).status_code == 200
    time.sleep(0.5)
    assert "internal error" not in dx.stderr(), dx.stderr()[-2000:]


def test_no_internal_error_after_clients_left(dx: DXServer) -> None:
    """Every client above left mid-answer: none of that is a dx bug in its log."""
    assert "internal error" not in dx.stderr(), dx.stderr()[-2000:]


# ---------------------------------------------------------------- while another client streams
@pytest.fixture(scope="module")
def dx_two_slots(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from dx.models.catalog import Store

    tmp = tmp_path_factory.mktemp("disconnect-two")
    Store(root=tmp / "home", ollama_dir=False).import_file(smollm2_gguf, MODEL)
    server = start_dx(tmp, "--ctx", "8192", engine=engine_binary(request), model=MODEL,
                      env={"OLLAMA_NUM_PARALLEL": "2"})  # two slots: two answers at once
    yield server
    server.stop()


def test_a_waiting_answer_is_cancelled_while_another_client_streams(dx_two_slots: DXServer) -> None:
    """The engine's waiter for a non-streaming answer wakes on every result of every request. Unpatched,
    each wake-up started its one-second wait again, so while another client streamed it never looked at
    its own connection: the abandoned answer decoded on to its limit (DX's patch 0004 gives it a deadline)."""
    dx = dx_two_slots
    with httpx.Client() as client:
        streaming = _send(dx, "/api/chat", {"model": MODEL, "messages": ASK, "options": LONG})
        assert _first_bytes(streaming).startswith(b"HTTP/1.1 200")
        try:
            released = _releases(dx)
            waiting = _send(dx, "/api/chat", {"model": MODEL, "messages": ASK, "stream": False, "options": LONG})
            deadline = time.monotonic() + 120
            while sum(_decoding([s]) for s in _slots(dx, client)) < 2:  # both answers decode now
                assert time.monotonic() < deadline, "the engine never decoded both answers"
                time.sleep(0.05)
            step = _token_time(dx, client)
            waiting.close()
            closed = time.monotonic()
            while _releases(dx) == released:
                streaming.recv(65536)  # the other client keeps reading its stream: results keep coming
                assert time.monotonic() - closed < 60, "the abandoned answer kept decoding"
            took = time.monotonic() - closed
            MEASURED["chat, beside a stream"], STEPS["chat, beside a stream"] = took, step
            assert took < IDLE_DEADLINE + 1.0 + 3 * step, f"freed {took:.2f}s after the client left ({step:.3f}s/token)"
            assert sum(bool(s.get("is_processing")) for s in _slots(dx, client)) == 1  # the stream goes on
        finally:
            streaming.close()
