"""The engine supervisor with the real engine: crashes, restarts, keep-alive, orphans, bad models."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from support.serve_harness import DXServer, dx_env, engine_binary, pid_alive, start_dx, wait_for
from support.waits import wait_until

pytestmark = pytest.mark.integration

MODEL = "smollm2:135m"
LONG = {"num_predict": 400, "temperature": 0.8, "seed": 1}


def _store_with_model(home: Path, gguf: Path, name: str = MODEL) -> Path:
    from dx.models.catalog import Store

    return Store(root=home, ollama_dir=False).import_file(gguf, name).path


@pytest.fixture(scope="module")
def dx(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("supervisor")
    _store_with_model(tmp / "home", smollm2_gguf)
    server = start_dx(tmp, "--ctx", "1024", engine=engine_binary(request), model=MODEL)
    yield server
    server.stop()


def _engine_pid(dx: DXServer) -> int:
    assert wait_for(lambda: len(dx.children()) == 1, timeout=60), dx.stderr()
    return dx.children()[0]


def _engine_decoding(pid: int) -> bool:
    """Is the engine generating tokens now? Asked of its own /slots, with the key dx gave it."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    port, key = (argv[argv.index(flag) + 1].decode() for flag in (b"--port", b"--api-key"))
    slots = httpx.get(f"http://127.0.0.1:{port}/slots", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
    return any(s.get("is_processing") and (s.get("next_token") or [{}])[0].get("n_decoded", 0) > 0 for s in slots)


def _stop(why: str) -> bool:
    raise AssertionError(why)


def _chat_works(dx: DXServer) -> None:
    r = dx.ollama(timeout=120).chat(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 4})
    assert r.done and r.message.content


def test_engine_runs_with_a_secret_key_on_loopback(dx: DXServer) -> None:
    _chat_works(dx)
    pid = _engine_pid(dx)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"--host") + 1] == b"127.0.0.1"
    port = int(argv[argv.index(b"--port") + 1])
    assert port != dx.port
    assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).status_code == 401  # only via dx
    assert (dx.home / "logs").is_dir() and any((dx.home / "logs").glob("engine-*.log"))


def test_engine_killed_mid_stream_ollama(dx: DXServer) -> None:
    client = dx.ollama(timeout=120)
    pid = _engine_pid(dx)
    stream = client.generate(model=MODEL, prompt="Tell me a very long story.", options=LONG, stream=True)
    with pytest.raises(ollama.ResponseError) as err:
        for n, _part in enumerate(stream):
            if n == 2:
                os.kill(pid, signal.SIGKILL)
    assert "engine" in str(err.value)
    _chat_works(dx)  # the next request gets a fresh engine
    assert dx.children() and dx.children()[0] != pid


def test_engine_killed_mid_stream_openai(dx: DXServer) -> None:
    client = dx.openai(timeout=120)
    pid = _engine_pid(dx)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a very long story."}], max_tokens=400,
        stream=True,
    )
    with pytest.raises(openai.APIError) as err:
        for n, _chunk in enumerate(stream):
            if n == 2:
                os.kill(pid, signal.SIGKILL)
    assert "engine" in str(err.value)
    _chat_works(dx)


def test_engine_killed_under_a_non_streaming_request_gives_503(dx: DXServer) -> None:
    import threading

    _chat_works(dx)
    pid = _engine_pid(dx)
    answer: list[httpx.Response] = []
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write forever."}], "max_tokens": 4000,
            "ignore_eos": True}
    worker = threading.Thread(target=lambda: answer.append(
        httpx.post(f"{dx.url}/v1/chat/completions", json=body, headers=dx.headers, timeout=300)))
    worker.start()
    wait_until(lambda: _engine_decoding(pid) or (not worker.is_alive() and _stop(f"the request ended first: {answer}")),
               "the engine to be generating for the request (its /slots)")
    os.kill(pid, signal.SIGKILL)
    worker.join(120)
    assert answer and answer[0].status_code == 503
    err = answer[0].json()["error"]
    assert "engine" in err["message"] and err["code"] == 503
    _chat_works(dx)


def test_engine_killed_while_loading_gives_503_with_retry_after(dx: DXServer) -> None:
    """An engine SIGKILLed while it loads (the soak run's fault landing on an engine dx had just started
    again) was answered 500 "cannot load model": not the model's fault, and the next request loads it."""
    import threading

    r = httpx.post(f"{dx.url}/api/generate", json={"model": MODEL, "keep_alive": 0}, headers=dx.headers, timeout=60)
    assert r.status_code == 200
    assert wait_for(lambda: not dx.children(), timeout=30)
    answer: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: answer.append(httpx.post(
        f"{dx.url}/api/generate", headers=dx.headers, timeout=120,
        json={"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 4}})))
    worker.start()
    assert wait_for(lambda: bool(dx.children()), timeout=30, interval=0.005), "no engine started"
    os.kill(dx.children()[0], signal.SIGKILL)  # before it is healthy: SmolLM2 takes a second or more to load
    worker.join(120)
    assert answer and answer[0].status_code == 503, (answer, answer and answer[0].text)
    assert answer[0].headers.get("Retry-After") == "1"
    assert "retry" in answer[0].json()["error"] and "/" not in answer[0].json()["error"]
    _chat_works(dx)


def test_engine_dead_between_requests_is_restarted(dx: DXServer) -> None:
    pid = _engine_pid(dx)
    os.kill(pid, signal.SIGKILL)
    _chat_works(dx)  # whether the reaper or the request restarts it, this one succeeds
    assert wait_for(lambda: len(dx.children()) == 1 and dx.children()[0] != pid)


def test_keep_alive_unloads_the_idle_engine(dx: DXServer) -> None:
    client = dx.ollama(timeout=120)
    client.generate(model=MODEL, prompt="Hi", options={"num_predict": 2}, keep_alive="1s")
    pid = _engine_pid(dx)
    running = client.ps().models
    assert [m.model for m in running] == [MODEL] and running[0].expires_at is not None
    assert wait_for(lambda: not pid_alive(pid), timeout=10), "idle engine was not unloaded"
    assert wait_for(lambda: client.ps().models == [], timeout=5)
    assert dx.children() == []
    _chat_works(dx)  # loads again on demand


@pytest.mark.parametrize("pdeathsig", [True, False], ids=["pdeathsig+watchdog", "watchdog-only"])
def test_sigkilled_dx_leaves_no_engine(
    request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path: Path, pdeathsig: bool
) -> None:
    _store_with_model(tmp_path / "home", smollm2_gguf)
    env = {} if pdeathsig else {"DX_NO_PDEATHSIG": "1"}
    server = start_dx(tmp_path, engine=engine_binary(request), model=MODEL, env=env)
    try:
        engine = _engine_pid(server)
        watchdogs = server.children("sh")
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        assert wait_for(lambda: not pid_alive(engine), timeout=5), "llama-server outlived a SIGKILLed dx"
        assert wait_for(lambda: not any(pid_alive(p) for p in watchdogs), timeout=5)
    finally:
        server.stop()


def _corrupt_copy(src: Path, dst: Path, at: int, data: bytes) -> Path:
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as fh:
        fh.seek(at)
        fh.write(data)
    return dst


def test_corrupted_model_file_is_refused_before_any_engine(
    request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path: Path
) -> None:
    bad = _corrupt_copy(smollm2_gguf, tmp_path / "bad.gguf", 8, (2**62).to_bytes(8, "little"))  # tensor count
    env = dx_env(tmp_path / "home", engine_binary(request))
    proc = subprocess.run([sys.executable, "-m", "dx", "serve", str(bad), "--port", "0"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dx: error:") and "tensor" in lines[0].lower()
    assert not list((tmp_path / "home").glob("logs/engine-*.log"))  # no engine was ever started


def test_tampered_store_blob_is_refused_with_the_reason(
    request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path: Path
) -> None:
    blob = _store_with_model(tmp_path / "home", smollm2_gguf, "victim:1")
    server = start_dx(tmp_path, engine=engine_binary(request))  # no default model: store names only
    try:
        size = blob.stat().st_size
        with open(blob, "r+b") as fh:  # flip bytes deep in the tensor data: structure fine, hash wrong
            fh.seek(size - 4096)
            chunk = fh.read(16)
            fh.seek(size - 4096)
            fh.write(bytes(b ^ 0xFF for b in chunk))
        st = blob.stat()  # the write's new mtime, even on a filesystem whose clock has not ticked since the import
        os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        r = httpx.post(f"{server.url}/api/generate", headers=server.headers, timeout=120,
                       json={"model": "victim:1", "prompt": "hi", "stream": False})
        assert r.status_code == 500
        assert "SHA-256" in r.json()["error"]
        assert server.children() == []
        assert not list((tmp_path / "home").glob("logs/engine-*.log"))
    finally:
        server.stop()


def test_embedded_model_is_served_in_place(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path: Path) -> None:
    """A minted file (runtime + padding + GGUF + trailer): the engine gets FILE#offset=N, no copy is made."""
    import json

    from dxverify.trailer import write_executable

    engine = engine_binary(request)
    facts = engine.parent.parent / "engine.json"
    assert facts.is_file() and json.loads(facts.read_text()).get("patches"), \
        f"{engine} lacks DX's FILE#offset=N patch ({facts} lists no patches: not a dxbuild engine?)"
    runtime = tmp_path / "runtime"
    runtime.write_bytes(b"not really a runtime" * 1000)
    exe = tmp_path / "dx-smollm2-cpu-linux-x86_64"
    with open(exe, "wb") as fh:
        em = write_executable(runtime, smollm2_gguf, fh, {
            "model": "smollm2", "source": "test", "tier": "cpu", "dx_version": "0", "llama_cpp_commit": "test"})
    server = start_dx(tmp_path, engine=engine, env={"DX_SELF_EXECUTABLE": str(exe)})
    try:
        assert "serving smollm2 on" in "".join(server.lines)
        pid = _engine_pid(server)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"-m") + 1] == f"{exe}#offset={em.offset}".encode()
        r = server.ollama(timeout=120).chat(
            model="smollm2", messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 4})
        assert r.done and r.message.content
        assert list(tmp_path.glob("**/*.gguf")) == []  # nothing extracted
    finally:
        server.stop()
