"""Everything that can be checked before a mint does any work, checked in its first second.

A doomed mint must fail before it downloads gigabytes or compiles for half an
hour (cibuildwheel plans before it builds): the tier must be buildable here,
its toolchain and Nuitka's prerequisites present, the output and cache
directories writable with room for the model and the executable, the signing
key readable, and the model's host reachable when the model has to be
downloaded. Each check is one small function returning the problem as a
DXError (one line: what is wrong, what to do) or None; :func:`preflight` runs
them in order and raises the first problem.
"""

from __future__ import annotations

import os
import shutil
import socket
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dxmatrix.cell import Cell
from dxverify.errors import ConfigurationError, DXError, EnvironmentProblem, UnsupportedError

MB = 1_000_000
#: Free space kept on top of what a mint writes (logs, temp files, the filesystem's own reserve).
MARGIN = 64 * MB
#: Seconds to wait for DNS before calling a host unreachable.
DNS_TIMEOUT = 3.0


@dataclass(frozen=True)
class Plan:
    """What the mint will need, worked out from the request without doing any of it."""

    cell: Cell
    model: str | None
    out_dir: Path
    cache: Path
    signing_key: Path | None
    model_size: int | None       # bytes of the GGUF, when known before downloading it
    model_cached: bool           # already in the DX cache (or a local file): no download
    download_host: str | None    # host:port the model comes from, when it must be downloaded


def tier_problem(plan: Plan) -> DXError | None:
    from dxbuild import toolchains

    problem = toolchains.host_problem(plan.cell)
    if problem:
        return UnsupportedError(f"cannot mint {plan.cell.name} on this machine: {problem}",
                                hint="`dxbuild matrix --host` lists what this machine can build")
    return None


def nuitka_problem(plan: Plan) -> DXError | None:
    """Nuitka compiles the runtime against Python's headers, with zstandard for the payload."""
    from dxbuild.bundle.nuitka import check_build_deps

    try:
        check_build_deps()
    except DXError as e:
        return e
    include = sysconfig.get_paths().get("include") or ""
    if not (Path(include) / "Python.h").is_file():
        return EnvironmentProblem(f"Python's C headers are missing ({include}/Python.h): Nuitka needs them "
                                  "to compile the runtime",
                                  hint="apt-get install python3-dev (Debian/Ubuntu), dnf install python3-devel "
                                       "(Fedora), or use a Python built with its headers (pyenv, uv)")
    return None


def writable_problem(d: Path, what: str, hint: str, error: type[DXError] = EnvironmentProblem) -> DXError | None:
    """Create ``d`` if needed and prove a file can be written there (a probe file, removed at once)."""
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".dx-write-test-", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return error(f"{what} {d} is not writable ({e.strerror or e})", hint=hint)
    return None


def cache_problem(plan: Plan) -> DXError | None:
    return writable_problem(plan.cache, "the DX cache", "fix its permissions or set DX_CACHE_DIR to another directory")


def disk_problem(plan: Plan, free: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free) -> DXError | None:
    """Room for the executable (runtime + model) in the output directory, and for the download in the cache."""
    model = plan.model_size or 0
    runtime = max(plan.cell.size_budget_mb, 20) * MB
    needs: dict[Path, int] = {}
    needs[plan.out_dir] = needs.get(plan.out_dir, 0) + model + runtime + MARGIN
    if not plan.model_cached and model:
        needs[plan.cache] = needs.get(plan.cache, 0) + model + MARGIN
    by_device: dict[int, tuple[Path, int]] = {}
    for d, n in needs.items():
        dev = d.stat().st_dev
        prev = by_device.get(dev)
        by_device[dev] = (prev[0] if prev else d, (prev[1] if prev else 0) + n)
    for d, n in by_device.values():
        have = free(d)
        if have < n:
            return EnvironmentProblem(
                f"not enough disk space on {d}: this mint needs about {n / MB:,.0f} MB "
                f"(model {model / MB:,.0f} MB, runtime up to {runtime / MB:,.0f} MB) and {have / MB:,.0f} MB are free",
                hint="free some space, or choose -o / DX_CACHE_DIR on a bigger disk")
    return None


def key_problem(plan: Plan) -> DXError | None:
    """A signing key that is named must be readable and decrypt now, not after the build."""
    from dxbuild.release.keys import find_signing_key

    try:
        find_signing_key(plan.signing_key)
    except DXError as e:
        return e
    return None


def resolves(host: str, port: int, timeout: float = DNS_TIMEOUT) -> bool:
    """Does ``host`` resolve within ``timeout``? (getaddrinfo has no timeout of its own.)"""
    ok: list[bool] = []

    def look() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=look, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok and ok[0])


def network_problem(plan: Plan, lookup: Callable[[str, int], bool] = resolves) -> DXError | None:
    if plan.model_cached or not plan.download_host:
        return None
    host, _, port = plan.download_host.rpartition(":")
    if lookup(host, int(port)):
        return None
    return EnvironmentProblem(
        f"model '{plan.model}' must be downloaded from {host}, and {host} cannot be resolved (no network?)",
        hint="connect to the network, point HF_ENDPOINT / DX_OLLAMA_REGISTRY at a reachable mirror, "
             "or pass a local .gguf path")


#: In order: the cheapest and most fundamental first.
CHECKS: tuple[Callable[[Plan], DXError | None], ...] = (
    tier_problem, nuitka_problem, cache_problem, disk_problem, key_problem, network_problem,
)


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def _hf_cached(repo: str, file: str, cache: Path) -> bool:
    snap = cache / "hf" / f"models--{repo.replace('/', '--')}" / "snapshots"
    return any(snap.glob(f"*/{file}"))


def model_needs(spec: str | None, cache: Path) -> tuple[int | None, bool, str | None]:
    """(size if known, already cached, host:port to download from) for a ``--model`` spec, offline."""
    if not spec:
        return None, True, None
    hf = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if spec.startswith("hf:"):
        parts = spec[3:].partition("@")[0].split("/")
        repo, file = "/".join(parts[:2]), "/".join(parts[2:])
        cached = offline or _hf_cached(repo, file, cache)
        return None, cached, None if cached else _host_port(hf)
    local = Path(spec).expanduser()
    if local.is_file():
        return local.stat().st_size, True, None
    if os.sep in spec or spec.endswith(".gguf"):
        raise ConfigurationError(f"{spec}: no such model file", hint="check the path, or give a recipe name")
    from dxbuild.models import load_model_recipes

    r = load_model_recipes().get(spec)
    if r is None:
        return None, False, None  # a name the model step resolves (or refuses) itself
    size = getattr(r, "size", None)
    sha = getattr(r, "sha256", "")
    blob = cache / "models" / f"sha256-{sha}"
    if blob.is_file():
        return size, True, None
    source = getattr(r, "source", "")
    if source == "huggingface":
        cached = offline or _hf_cached(str(getattr(r, "repo", "")), str(getattr(r, "file", "")), cache)
        return size, cached, None if cached else _host_port(hf)
    if source == "ollama":
        registry = os.environ.get("DX_OLLAMA_REGISTRY") or "https://registry.ollama.ai"
        return size, False, _host_port(registry)
    return size, False, None  # pypi: pip has its own index settings and errors


def plan(cell: Cell, model: str | None, out_dir: Path, signing_key: Path | None, cache: Path) -> Plan:
    size, cached, host = model_needs(model, cache)
    return Plan(cell=cell, model=model, out_dir=out_dir, cache=cache, signing_key=signing_key,
                model_size=size, model_cached=cached, download_host=host)


def preflight(p: Plan, echo: Callable[[str], None] | None = None,
              checks: tuple[Callable[[Plan], DXError | None], ...] = CHECKS) -> None:
    """Run every check; raise the first problem found. Takes well under a second."""
    t0 = time.monotonic()
    for check in checks:
        problem = check(p)
        if problem is not None:
            raise problem
    if echo:
        echo(f"[0] preflight: {p.cell.name} buildable here, output and cache writable, enough disk "
             f"({time.monotonic() - t0:.2f}s)")
