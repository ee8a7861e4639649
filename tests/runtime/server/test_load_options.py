"""Ollama's load-time ``options`` (num_thread, num_batch, num_gpu, ...) become llama-server flags.

Units for the mapping, and one run against the real engine + SmolLM2: the engine is restarted with
the request's flags, a later request without load options reuses it, a bad value is Ollama's 400.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support.serve_harness import DXServer, engine_binary, serve_model

from dx.engine.lease import EngineLoad
from dx.engine.manager import _for_purpose
from dx.errors import BadRequest
from dx.server.ollama_wire import load_args, map_options

MODEL = "smollm2:135m"


@pytest.mark.parametrize(
    ("options", "args"),
    [
        ({"num_thread": 3}, ("-t", "3")),
        ({"num_batch": 64}, ("-b", "64", "-ub", "64")),
        ({"num_gpu": 0}, ("-ngl", "0")),
        ({"num_gpu": 12}, ("-ngl", "12")),
        ({"main_gpu": 1}, ("-mg", "1")),
        ({"use_mmap": False}, ("--load-mode", "none")),
        ({"use_mlock": True}, ("--load-mode", "mmap+mlock")),
        ({"use_mmap": False, "use_mlock": True}, ("--load-mode", "mlock")),
        ({"numa": True}, ("--numa", "distribute")),
        ({"num_thread": 2.0}, ("-t", "2")),  # a JSON number with no fraction is an integer, as in Ollama
        # the engine's defaults: named (so an engine started otherwise goes back to them), no flag
        ({"num_thread": 0}, ()),
        ({"num_gpu": -1}, ()),
        ({"use_mmap": True, "use_mlock": False, "numa": False}, ()),
    ],
)
def test_load_options_become_engine_flags(options: dict[str, object], args: tuple[str, ...]) -> None:
    assert load_args(options) == args
    _fields, load = map_options({"temperature": 0.1, **options})
    assert load == EngineLoad(ctx=None, args=args)


def test_no_load_options_means_no_reload() -> None:
    # the hot path: sampling options only (or load options set to null) carry no load at all
    assert map_options({"temperature": 0.1, "num_predict": 4}) == ({"temperature": 0.1, "max_tokens": 4}, None)
    assert map_options({"num_thread": None, "use_mmap": None})[1] is None
    # num_ctx alone leaves the engine's flags as they are (args None), as before
    assert map_options({"num_ctx": 1024})[1] == EngineLoad(ctx=1024, args=None)


def test_retired_options_are_ignored_as_ollama_does() -> None:
    retired = {"low_vram": True, "f16_kv": True, "logits_all": True, "vocab_only": True, "penalize_newline": True,
               "tfs_z": 0.9, "num_gqa": 8, "rope_frequency_base": 1e4, "rope_frequency_scale": 1.0}
    assert map_options(retired) == ({}, None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_thread": "4"}, 'option "num_thread" must be of type integer'),
        ({"num_batch": 1.5}, 'option "num_batch" must be of type integer'),
        ({"num_gpu": True}, 'option "num_gpu" must be of type integer'),
        ({"use_mmap": "false"}, 'option "use_mmap" must be of type boolean'),
        ({"numa": 1}, 'option "numa" must be of type boolean'),
        ({"num_thread": -2}, 'option "num_thread" must be an integer >= 0'),
        ({"num_batch": 0}, 'option "num_batch" must be an integer >= 1'),
        ({"num_gpu": -2}, 'option "num_gpu" must be an integer >= -1'),
        ({"main_gpu": -1}, 'option "main_gpu" must be an integer >= 0'),
        ({"num_thread": 1 << 40}, 'option "num_thread" must be an integer >= 0'),
    ],
)
def test_bad_load_options_are_bad_requests(options: dict[str, object], message: str) -> None:
    with pytest.raises(BadRequest) as err:
        map_options(options)
    assert str(err.value) == message


def test_embedding_engines_keep_their_batch() -> None:
    args = ("-t", "2", "-b", "64", "-ub", "64", "--numa", "distribute")
    assert _for_purpose(args, "generate") == args
    assert _for_purpose(args, "embed") == ("-t", "2", "--numa", "distribute")


# --- the real engine -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dx(request: pytest.FixtureRequest, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    engine = engine_binary(request)
    tmp = tmp_path_factory.mktemp("loadopts")
    server = serve_model(tmp, smollm2_gguf, MODEL, "--ctx", "1024", engine=engine)
    server.home = tmp / "home"  # type: ignore[attr-defined]
    yield server
    server.stop()


def _generate(dx: DXServer, **options: object) -> httpx.Response:
    body = {"model": MODEL, "prompt": "Say hi", "stream": False,
            "options": {"num_predict": 4, "temperature": 0, **options}}
    return httpx.post(f"{dx.url}/api/generate", json=body, headers=dx.headers, timeout=180)


def _engine_log(dx: DXServer) -> Path:
    logs = [p for p in (dx.home / "logs").glob("engine-*.log") if "-embed" not in p.name]  # type: ignore[attr-defined]
    assert len(logs) == 1, logs
    return logs[0]


@pytest.mark.integration
def test_load_options_restart_the_engine_with_their_flags(dx: DXServer) -> None:
    assert _generate(dx).status_code == 200  # an engine with the defaults first
    first = _engine_log(dx).read_text(errors="replace").splitlines()[0]
    assert " -t " not in first

    r = _generate(dx, num_thread=1, num_batch=64)
    assert r.status_code == 200, r.text
    assert r.json()["response"]
    command = _engine_log(dx).read_text(errors="replace").splitlines()[0]
    assert command.startswith("+ ") and "llama-server" in command
    assert " -t 1 -b 64 " in f"{command} "
    inode = _engine_log(dx).stat().st_ino

    # no load options: served by the engine that is loaded, no restart (the log is not rewritten)
    r = _generate(dx)
    assert r.status_code == 200, r.text
    assert r.json()["load_duration"] < 0.5e9
    assert _engine_log(dx).stat().st_ino == inode
    assert _engine_log(dx).read_text(errors="replace").splitlines()[0] == command

    # a bad value: Ollama's 400, one line, nothing started
    r = _generate(dx, num_thread="many")
    assert r.status_code == 400
    assert r.json() == {"error": 'option "num_thread" must be of type integer'}
