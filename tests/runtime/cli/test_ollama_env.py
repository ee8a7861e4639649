"""Ollama's environment for `dx serve`: each OLLAMA_* means what it means to `ollama serve`, a DX_* of the
same meaning wins, a flag wins over both, and a value dx cannot use is a one-line error at start.

The parsing is dx.config (pure); the wiring is `dx serve` itself, run in-process up to the ServeOptions it
hands to dx.server.app.serve (captured here, so nothing binds or starts an engine)."""

from __future__ import annotations

from typing import Any

import pytest

from dx import config
from dx.cli import cli
from dx.server import app as server_app
from dx.server.app import ServeOptions, engine_flags
from dxverify.cli_errors import run_cli

_NAMES = ("HOST", "PORT", "ALLOW_ORIGINS", "KEEP_ALIVE", "CTX", "PARALLEL", "MAX_LOADED", "MAX_REQUESTS",
          "FLASH_ATTN", "KV_CACHE_TYPE")
_OLLAMA = ("HOST", "ORIGINS", "KEEP_ALIVE", "CONTEXT_LENGTH", "NUM_PARALLEL", "MAX_LOADED_MODELS", "MAX_QUEUE",
           "FLASH_ATTENTION", "KV_CACHE_TYPE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _NAMES:
        monkeypatch.delenv(f"DX_{name}", raising=False)
    for name in _OLLAMA:
        monkeypatch.delenv(f"OLLAMA_{name}", raising=False)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[ServeOptions]:
    seen: list[ServeOptions] = []
    monkeypatch.setattr(server_app, "serve", seen.append)
    return seen


def _serve(served: list[ServeOptions], *args: str) -> ServeOptions:
    assert run_cli(cli, "dx", ["serve", *args]) == 0
    return served[-1]


# ---------------------------------------------------------------- OLLAMA_HOST, as envconfig.Host() reads it
@pytest.mark.parametrize(("value", "want"), [
    ("0.0.0.0", ("0.0.0.0", 11434)),
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    (":9000", ("0.0.0.0", 9000)),  # every address, as Ollama binds it
    ("localhost", ("localhost", 11434)),
    ("http://10.0.0.2:1234", ("10.0.0.2", 1234)),
    ("http://box", ("box", 80)),  # a scheme without a port: its port, as in Ollama
    ("https://box/ollama", ("box", 443)),
    ("[::1]:5000", ("::1", 5000)),
    ("[::1]", ("::1", 11434)),
    ("::1", ("::1", 11434)),
    ("host:", ("host", 11434)),
    ('"127.0.0.1:7"', ("127.0.0.1", 7)),  # quotes from a systemd unit are trimmed, as Ollama does
])
def test_ollama_host_forms(value: str, want: tuple[str, int]) -> None:
    assert config.parse_ollama_host(value) == want


@pytest.mark.parametrize("value", ["box:http", "box:70000", "[::1", "[::1]x", "fe80::zz:1"])
def test_ollama_host_garbage_is_one_line(value: str) -> None:
    with pytest.raises(config.EnvError, match=r"^OLLAMA_HOST=") as err:
        config.parse_ollama_host(value)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- precedence: flag > DX_* > OLLAMA_* > default
def test_nothing_set_keeps_dx_defaults(served: list[ServeOptions]) -> None:
    opts = _serve(served)
    assert (opts.host, opts.port, opts.keep_alive, opts.ctx, opts.parallel, opts.max_loaded) == \
        ("127.0.0.1", 11434, "5m", None, 4, 3)
    assert (opts.limits.max_requests, opts.flash_attn, opts.kv_cache_type, list(opts.allow_origins)) == \
        (128, None, None, [])
    assert engine_flags(opts) == []


def test_every_ollama_variable_reaches_serve(served: list[ServeOptions], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"HOST": "127.0.0.2:7000", "ORIGINS": "http://localhost:3000,https://app.example",
                        "KEEP_ALIVE": "1h", "CONTEXT_LENGTH": "8192", "NUM_PARALLEL": "2",
                        "MAX_LOADED_MODELS": "5", "MAX_QUEUE": "64", "FLASH_ATTENTION": "1",
                        "KV_CACHE_TYPE": "Q8_0"}.items():
        monkeypatch.setenv(f"OLLAMA_{name}", value)
    opts = _serve(served)
    assert (opts.host, opts.port, opts.keep_alive, opts.ctx, opts.parallel, opts.max_loaded) == \
        ("127.0.0.2", 7000, "1h", 8192, 2, 5)
    assert list(opts.allow_origins) == ["http://localhost:3000", "https://app.example"]
    assert opts.limits.max_requests == 64
    assert engine_flags(opts) == ["--flash-attn", "on", "--cache-type-k", "q8_0", "--cache-type-v", "q8_0"]


def test_dx_names_win_over_ollama_names(served: list[ServeOptions], monkeypatch: pytest.MonkeyPatch) -> None:
    both = {"KEEP_ALIVE": ("10m", "1h"), "PARALLEL": ("3", "2"), "MAX_LOADED": ("2", "5"),
            "MAX_REQUESTS": ("32", "64"), "FLASH_ATTN": ("off", "true"), "KV_CACHE_TYPE": ("q4_0", "q8_0"),
            "CTX": ("1024", "8192"), "ALLOW_ORIGINS": ("http://a.example", "http://b.example")}
    ollama = {"PARALLEL": "NUM_PARALLEL", "MAX_LOADED": "MAX_LOADED_MODELS", "MAX_REQUESTS": "MAX_QUEUE",
              "FLASH_ATTN": "FLASH_ATTENTION", "CTX": "CONTEXT_LENGTH", "ALLOW_ORIGINS": "ORIGINS"}
    for name, (dx_value, ollama_value) in both.items():
        monkeypatch.setenv(f"DX_{name}", dx_value)
        monkeypatch.setenv(f"OLLAMA_{ollama.get(name, name)}", ollama_value)
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.3:7001")
    monkeypatch.setenv("DX_HOST", "127.0.0.4")  # DX_HOST is the address; the port still comes from OLLAMA_HOST
    opts = _serve(served)
    assert (opts.host, opts.port) == ("127.0.0.4", 7001)
    monkeypatch.setenv("DX_PORT", "7002")
    opts = _serve(served)
    assert (opts.host, opts.port) == ("127.0.0.4", 7002)
    assert (opts.keep_alive, opts.ctx, opts.parallel, opts.max_loaded, opts.limits.max_requests) == \
        ("10m", 1024, 3, 2, 32)
    assert list(opts.allow_origins) == ["http://a.example"]
    assert engine_flags(opts) == ["--flash-attn", "off", "--cache-type-k", "q4_0", "--cache-type-v", "q4_0"]


def test_flags_win_over_both(served: list[ServeOptions], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"DX_HOST": "127.0.0.4", "OLLAMA_HOST": "127.0.0.3:7001", "DX_KEEP_ALIVE": "10m",
                        "OLLAMA_NUM_PARALLEL": "2", "DX_CTX": "1024", "OLLAMA_MAX_LOADED_MODELS": "5",
                        "OLLAMA_MAX_QUEUE": "64", "OLLAMA_FLASH_ATTENTION": "1", "DX_KV_CACHE_TYPE": "q4_0",
                        "OLLAMA_ORIGINS": "http://b.example"}.items():
        monkeypatch.setenv(name, value)
    opts = _serve(served, "--host", "127.0.0.9", "--port", "0", "--keep-alive", "-1", "--parallel", "6",
                  "--ctx", "512", "--max-loaded", "1", "--max-requests", "9", "--flash-attn", "auto",
                  "--kv-cache-type", "F16", "--allow-origins", "http://c.example")
    assert (opts.host, opts.port, opts.keep_alive, opts.parallel, opts.ctx, opts.max_loaded) == \
        ("127.0.0.9", 0, "-1", 6, 512, 1)
    assert opts.limits.max_requests == 9 and list(opts.allow_origins) == ["http://c.example"]
    assert engine_flags(opts) == ["--flash-attn", "auto", "--cache-type-k", "f16", "--cache-type-v", "f16"]


@pytest.mark.parametrize(("name", "value", "field", "want"), [
    ("OLLAMA_CONTEXT_LENGTH", "0", "ctx", None),  # Ollama's 0: its default
    ("OLLAMA_NUM_PARALLEL", "0", "parallel", 4),
    ("OLLAMA_MAX_LOADED_MODELS", "0", "max_loaded", 3),
    ("OLLAMA_FLASH_ATTENTION", "false", "flash_attn", "off"),
    ("OLLAMA_FLASH_ATTENTION", "True", "flash_attn", "on"),
    ("DX_FLASH_ATTN", "auto", "flash_attn", "auto"),
    ("OLLAMA_KEEP_ALIVE", "300", "keep_alive", "300"),  # seconds, as Ollama reads a bare number
    ("OLLAMA_KEEP_ALIVE", "-1", "keep_alive", "-1"),
    ("OLLAMA_HOST", "", "host", "127.0.0.1"),  # empty is unset
    ("DX_ALLOW_ORIGINS", "http://a.example http://b.example", "allow_origins", ["http://a.example",
                                                                                "http://b.example"]),
])
def test_ollama_meanings(served: list[ServeOptions], monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                         field: str, want: Any) -> None:
    monkeypatch.setenv(name, value)
    got = getattr(_serve(served), field)
    assert (list(got) if field == "allow_origins" else got) == want


# ---------------------------------------------------------------- what dx cannot use: one line, exit 2
@pytest.mark.parametrize(("name", "value", "words"), [
    ("OLLAMA_ORIGINS", "*", "wildcard"),
    ("OLLAMA_ORIGINS", "http://localhost:3000,chrome-extension://*", "wildcard"),
    ("DX_ALLOW_ORIGINS", "http://localhost:*", "wildcard"),
    ("OLLAMA_KV_CACHE_TYPE", "q3_k", "not a K/V cache type"),
    ("OLLAMA_FLASH_ATTENTION", "maybe", "1/true or 0/false"),
    ("DX_FLASH_ATTN", "fast", "on, off or auto"),
    ("OLLAMA_NUM_PARALLEL", "two", "not a whole number"),
    ("OLLAMA_NUM_PARALLEL", "500", "between 1 and 64"),
    ("OLLAMA_CONTEXT_LENGTH", "100", "between 256"),
    ("OLLAMA_MAX_QUEUE", "-3", "between 1 and 4096"),
    ("OLLAMA_MAX_LOADED_MODELS", "1.5", "not a whole number"),
    ("OLLAMA_KEEP_ALIVE", "soon", "duration"),
    ("OLLAMA_HOST", "box:http", "not a port"),
    ("DX_PORT", "http", "not a whole number"),
])
def test_bad_values_are_one_line_errors(served: list[ServeOptions], monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str], name: str, value: str,
                                        words: str) -> None:
    monkeypatch.setenv(name, value)
    assert run_cli(cli, "dx", ["serve"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"dx: error: {name}=") and words in err, err
    assert served == []


def test_a_flag_overrides_a_bad_variable(served: list[ServeOptions], monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad variable stops dx even when a flag covers it: the unit should be fixed, not half-read."""
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "two")
    assert run_cli(cli, "dx", ["serve", "--parallel", "2"]) == 2


def test_help_names_the_variables(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(cli, "dx", ["serve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in ("OLLAMA_HOST", "OLLAMA_ORIGINS", "OLLAMA_MODELS", "OLLAMA_KEEP_ALIVE", "OLLAMA_CONTEXT_LENGTH",
                 "OLLAMA_NUM_PARALLEL", "OLLAMA_MAX_LOADED_MODELS", "OLLAMA_MAX_QUEUE", "OLLAMA_FLASH_ATTENTION",
                 "OLLAMA_KV_CACHE_TYPE", "DX_HOST", "DX_PORT", "DX_KEEP_ALIVE", "DX_CTX", "DX_PARALLEL",
                 "DX_MAX_LOADED", "DX_MAX_REQUESTS", "DX_FLASH_ATTN", "DX_KV_CACHE_TYPE", "DX_ALLOW_ORIGINS"):
        assert name in text, name
