"""Every environment variable the runtime reads, in one place (like Ollama's ``envconfig``).

Each setting is a function, read when asked (tests and ``dx serve`` change the
environment at run time), named after what it means rather than the variable.
Only the standard library: this module sits at the bottom of the runtime's layers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

# Variables dx's commands read through click (envvar=...) or ``serve_env`` below: the names live here too.
HOST_ENV = "DX_HOST"
PORT_ENV = "DX_PORT"
API_KEY_ENV = "DX_API_KEY"
ALLOWED_HOSTS_ENV = "DX_ALLOWED_HOSTS"
ALLOW_ORIGINS_ENV = "DX_ALLOW_ORIGINS"
SWARM_SECRET_ENV = "DX_SWARM_SECRET"
SELF_EXECUTABLE_ENV = "DX_SELF_EXECUTABLE"
OLLAMA_REGISTRY_ENV = "DX_OLLAMA_REGISTRY"
OLLAMA_TOKEN_ENV = "DX_OLLAMA_TOKEN"
PULL_PARTS_ENV = "DX_PULL_PARTS"
PULL_STALL_ENV = "DX_PULL_STALL_S"
CUDA_RUNTIME_ENV = "DX_CUDA_RUNTIME"  # a directory with cuBLAS/cudart, tried first (read from the mapping dx.host.cuda_libs is given)


def dx_home() -> Path:
    """DX's own directory: ``$DX_HOME`` or ``~/.dx`` (models, API key, caches)."""
    env = os.environ.get("DX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".dx"


def tools_log_path() -> Path:
    """The audit log of MCP tool calls (``dx serve --mcp``, ``dx run --mcp``): ``$DX_HOME/logs/tools.jsonl``."""
    return dx_home() / "logs" / "tools.jsonl"


def api_key_env() -> str | None:
    """The API key a client command sends (``$DX_API_KEY``), None when unset or empty."""
    return os.environ.get(API_KEY_ENV) or None


def engine_override() -> str | None:
    """``$DX_ENGINE``: a llama-server binary or a directory holding one."""
    return os.environ.get("DX_ENGINE")


def cache_dir_override() -> str | None:
    """``$DX_CACHE_DIR``: DX's cache (built engines, bundles) instead of ``~/.cache/dx``."""
    return os.environ.get("DX_CACHE_DIR")


def pdeathsig_disabled() -> bool:
    """``DX_NO_PDEATHSIG=1``: do not tie the engine's life to dx's thread (debugging only)."""
    return os.environ.get("DX_NO_PDEATHSIG") == "1"


def ollama_models_dir() -> str | None:
    """``$OLLAMA_MODELS``: Ollama's own store, read-only to DX."""
    return os.environ.get("OLLAMA_MODELS")


def self_executable_override() -> str | None:
    """``$DX_SELF_EXECUTABLE``: the file to read an embedded model from instead of ``sys.argv[0]`` (tests, wrappers)."""
    return os.environ.get(SELF_EXECUTABLE_ENV) or None


def swarm_secret_env() -> str | None:
    """``$DX_SWARM_SECRET``: the swarm secret file (a path, never the secret itself)."""
    return os.environ.get(SWARM_SECRET_ENV) or None


def ollama_registry_override() -> str:
    """``$DX_OLLAMA_REGISTRY``: a registry base URL used instead of ``https://<host>`` ('' when unset)."""
    return (os.environ.get(OLLAMA_REGISTRY_ENV) or "").strip().rstrip("/")


def ollama_token_env() -> str | None:
    """``$DX_OLLAMA_TOKEN`` as set (None when unset or empty); sent only to the registry's own host."""
    return os.environ.get(OLLAMA_TOKEN_ENV) or None


def pull_parts_env() -> str:
    """``$DX_PULL_PARTS``: parallel Range parts of a big blob, as written ('' when unset)."""
    return (os.environ.get(PULL_PARTS_ENV) or "").strip()


def pull_stall_env() -> str:
    """``$DX_PULL_STALL_S``: seconds without a byte before a part is retried, as written ('' when unset)."""
    return os.environ.get(PULL_STALL_ENV, "") or ""


def xdg_cache_home() -> str | None:
    """``$XDG_CACHE_HOME`` (the base of DX's cache when ``$DX_CACHE_DIR`` is unset)."""
    return os.environ.get("XDG_CACHE_HOME") or None


# ---------------------------------------------------------------- dx serve: its own names, and Ollama's
# A systemd unit written for `ollama serve` works for `dx serve`: each OLLAMA_* variable below means for
# dx serve what it means for Ollama (envconfig/config.go), a DX_* of the same meaning wins over it, and
# a flag wins over both; 0 for a number is the default, as in Ollama. A value dx cannot use is a one-line error at start (EnvError), where Ollama
# would log a warning and go on with its default: a unit that asks for something should get it or stop.
KEEP_ALIVE_ENV = "DX_KEEP_ALIVE"
CTX_ENV = "DX_CTX"
PARALLEL_ENV = "DX_PARALLEL"
MAX_LOADED_ENV = "DX_MAX_LOADED"
MAX_REQUESTS_ENV = "DX_MAX_REQUESTS"
FLASH_ATTN_ENV = "DX_FLASH_ATTN"
KV_CACHE_TYPE_ENV = "DX_KV_CACHE_TYPE"

#: the engine's K/V cache types (``--cache-type-k``: kv_cache_types in the pinned common/arg.cpp)
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
_TRUE = ("1", "t", "true", "y", "yes", "on")
_FALSE = ("0", "f", "false", "n", "no", "off")


class EnvError(ValueError):
    """An environment variable for ``dx serve`` holds a value it cannot use; ``str()`` is one line naming it."""


@dataclass(frozen=True)
class ServeEnv:
    """What the environment asks of ``dx serve``; None where nothing is set.

    ``source`` says, per field, which variable a value came from (for the errors a later check raises).
    """

    host: str | None = None
    port: int | None = None
    allow_origins: tuple[str, ...] | None = None
    keep_alive: str | None = None
    ctx: int | None = None
    parallel: int | None = None
    max_loaded: int | None = None
    max_requests: int | None = None
    flash_attn: str | None = None  # on | off | auto
    kv_cache_type: str | None = None
    source: dict[str, str] = field(default_factory=dict)


def _var(name: str) -> str | None:
    """A variable's value, blanks and surrounding quotes trimmed as Ollama does; None when unset or empty."""
    value = os.environ.get(name, "").strip().strip("\"'")
    return value or None


def _first(*names: str) -> tuple[str, str] | None:
    """(value, name) of the first of ``names`` that is set."""
    for name in names:
        value = _var(name)
        if value is not None:
            return value, name
    return None


def parse_ollama_host(value: str) -> tuple[str, int]:
    """``OLLAMA_HOST`` as Ollama's envconfig.Host() reads it: (bind address, port).

    ``host``, ``host:port``, ``:port`` (every address, as Ollama binds it), ``[::1]:port``,
    ``http://host[:port]`` (no port: 80, https: 443; a path is ignored); a bare host, or ``host:``, keeps
    11434. What Ollama would only warn about (a port that is not a number) is an EnvError here.
    """
    text = value.strip().strip("\"'")
    scheme, sep, hostport = text.partition("://")
    default_port = 11434
    if not sep:
        hostport = text
    elif scheme == "http":
        default_port = 80
    elif scheme == "https":
        default_port = 443
    hostport = hostport.split("/", 1)[0]
    host, port = hostport, ""
    if hostport.startswith("["):  # [v6] or [v6]:port
        inside, bracket, rest = hostport[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise EnvError(f"OLLAMA_HOST={value!r}: not an address (write [::1]:11434 for IPv6)")
        host, port = inside, rest[1:]
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    elif hostport.count(":") > 1:
        with contextlib.suppress(ValueError):
            return str(ipaddress.IPv6Address(hostport)), default_port  # a bare IPv6 address, as Ollama takes it
        raise EnvError(f"OLLAMA_HOST={value!r}: an IPv6 address needs brackets, e.g. [::1]:11434")
    if port and not (port.isdigit() and int(port) <= 65535):
        raise EnvError(f"OLLAMA_HOST={value!r}: {port!r} is not a port (0-65535)")
    if not host:
        host = "0.0.0.0" if port else "127.0.0.1"  # ':8080' binds every address, as in Ollama
    return host, int(port) if port else default_port


def _int(value: str, name: str, low: int, high: int, zero_unset: bool) -> int | None:
    try:
        n = int(value)
    except ValueError:
        raise EnvError(f"{name}={value!r}: not a whole number") from None
    if n == 0 and zero_unset:
        return None  # Ollama's 0: its own default
    if not low <= n <= high:
        raise EnvError(f"{name}={value!r}: must be between {low} and {high}")
    return n


def _flash_attn(value: str, name: str) -> str:
    low = value.lower()
    if low in _TRUE:
        return "on"
    if low in _FALSE:
        return "off"
    if low == "auto" and name == FLASH_ATTN_ENV:
        return "auto"
    words = "on, off or auto" if name == FLASH_ATTN_ENV else "1/true or 0/false"
    raise EnvError(f"{name}={value!r}: must be {words}")


def kv_cache_type(value: str, name: str) -> str:
    """A K/V cache type the engine takes (lower-cased, as Ollama passes it); EnvError naming ``name`` else."""
    low = value.strip().lower()
    if low not in KV_CACHE_TYPES:
        raise EnvError(f"{name}={value!r}: not a K/V cache type; use one of {', '.join(KV_CACHE_TYPES)} "
                       "(f16 is the default, q8_0 halves the cache)")
    return low


def allow_origins_list(value: str, name: str) -> tuple[str, ...]:
    """A comma (or space) separated list of origins. A wildcard is refused: Ollama takes ``*`` and
    ``chrome-extension://*``, which would let every such page use the server and read its answers."""
    items = tuple(value.replace(",", " ").split())
    for item in items:
        if "*" in item:
            raise EnvError(f"{name}={value!r}: dx does not accept wildcard origins ({item!r} would let any such "
                           f"page use this server); list each origin in full, e.g. {name}=http://localhost:3000")
    return items


def serve_env() -> ServeEnv:
    """Everything the environment sets for ``dx serve`` (DX_* before OLLAMA_*), checked; raises EnvError."""
    values: dict[str, object] = {}
    source: dict[str, str] = {}

    def put(key: str, value: object, name: str) -> None:
        if value is not None:
            values[key] = value
            source[key] = name

    ollama_host = _var("OLLAMA_HOST")
    o_host, o_port = parse_ollama_host(ollama_host) if ollama_host else (None, None)
    if (h := _var(HOST_ENV)) is not None:
        put("host", h, HOST_ENV)
    else:
        put("host", o_host, "OLLAMA_HOST")
    if (p := _var(PORT_ENV)) is not None:
        put("port", _int(p, PORT_ENV, 0, 65535, zero_unset=False), PORT_ENV)
    else:
        put("port", o_port, "OLLAMA_HOST")
    if got := _first(ALLOW_ORIGINS_ENV, "OLLAMA_ORIGINS"):
        put("allow_origins", allow_origins_list(*got), got[1])
    if got := _first(KEEP_ALIVE_ENV, "OLLAMA_KEEP_ALIVE"):
        put("keep_alive", got[0], got[1])  # checked where durations are read (dx.engine.keep_alive)
    if got := _first(CTX_ENV, "OLLAMA_CONTEXT_LENGTH"):
        put("ctx", _int(*got, 256, 1 << 20, zero_unset=True), got[1])
    if got := _first(PARALLEL_ENV, "OLLAMA_NUM_PARALLEL"):
        put("parallel", _int(*got, 1, 64, zero_unset=True), got[1])
    if got := _first(MAX_LOADED_ENV, "OLLAMA_MAX_LOADED_MODELS"):
        put("max_loaded", _int(*got, 1, 1024, zero_unset=True), got[1])
    if got := _first(MAX_REQUESTS_ENV, "OLLAMA_MAX_QUEUE"):
        put("max_requests", _int(*got, 1, 4096, zero_unset=True), got[1])
    if got := _first(FLASH_ATTN_ENV, "OLLAMA_FLASH_ATTENTION"):
        put("flash_attn", _flash_attn(*got), got[1])
    if got := _first(KV_CACHE_TYPE_ENV, "OLLAMA_KV_CACHE_TYPE"):
        put("kv_cache_type", kv_cache_type(*got), got[1])
    return ServeEnv(**values, source=source)  # type: ignore[arg-type]
