"""Compile the `dx` runtime with Nuitka into one onefile binary, cached by content.

The bundle is the runtime (packages ``dx`` and ``dxverify``) plus the tier's
engine directory as data (``dx_engine/bin/llama-server``, ``dx_engine/lib/*.so``).
Its cache key is the hash of everything that goes into it — the runtime source
files, the engine's key, the Nuitka and Python versions and the exact Nuitka
options — so minting twice with the same inputs compiles nothing.

The onefile unpacks to a persistent directory under the user's cache
(``{CACHE_DIR}/dx/run/<version>-<tier>-<key16>``) in Nuitka's ``cached`` mode
with the ``--onefile-as-archive`` layout: only the first start pays for
unpacking. Nuitka itself makes this safe against a killed first start: at every
start it compares each unpacked file's CRC-32 with the payload's and rewrites
any file that differs or is missing, so a half-written directory is repaired
on the next start (tests/mint prove it).

Two builds at once (two engineers, two test sessions) must not share Nuitka's
onefile-compression cache: Nuitka writes each compressed file there in place,
so a second build can pick up a half-written one and store a zero-length entry
("couldn't decode attached data" at start). Each build gets a private one, and
a bundle's payload is parsed before it may enter the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dxbuild.paths import cache_dir as default_cache_dir
from dxbuild.run_cmd import run_cmd
from dxverify.errors import ConfigurationError, ToolError

NUITKA_VERSION = "4.3.3"
# Folder name of the engine inside the bundle; dx's engine locator looks here first.
ENGINE_DATA_DIR = "engine"
# Packages that make the runtime. dxbuild is never part of it.
RUNTIME_PACKAGES = ("dx", "dxverify")
# Heavy imports the runtime can do without: an optional feature that needs one
# says so at run time instead of growing every executable.
NOFOLLOW = (
    "dxbuild", "dxmatrix", "numpy", "gguf", "huggingface_hub", "sigstore", "openai", "ollama",
    "httpx", "jinja2", "cyclonedx", "pytest", "hypothesis", "setuptools", "pip", "pkg_resources",
    "tkinter", "pydoc", "unittest", "doctest", "xmlrpc", "lib2to3", "distutils", "zstandard",
    "IPython", "rich", "pygments", "yaml", "requests", "urllib3", "certifi", "idna",
    # Release signatures are checked by `dxbuild verify-release` / install.sh (openssl), not by
    # the runtime; cryptography alone would add ~5 MB to every executable.
    "cryptography", "cffi", "dxverify.signatures",
    # Nothing in dx does decimal arithmetic; _decimal alone is 0.6 MB compressed.
    "decimal", "_pydecimal", "statistics", "fractions",
    # Nor pickling (_pickle is 0.5 MB). (unicodedata stays: socket.getaddrinfo encodes every
    # host name with the idna codec, which imports it.)
    "pickle", "_pickle",
)
# A Nuitka user plugin: drops the CJK codecs, which UTF-8 mode never needs (see the file).
TRIM_PLUGIN = Path(__file__).with_name("nuitka_trim.py")
# A Nuitka user plugin: the onefile bootstrap execs the cached program instead of forking and
# waiting for it, so a running executable is one process (see the file).
EXEC_PLUGIN = Path(__file__).with_name("nuitka_exec.py")
# From the engine directory only what serving needs travels in the bundle.
# ggml-rpc-server: `dx worker` (DX Swarm) from the same build as llama-server.
ENGINE_FILES = ("bin/llama-server", "bin/ggml-rpc-server", "engine.json")

# The build-time tools' own libraries (llama-bench, llama-quantize) never travel.
_TOOL_ONLY_LIB = re.compile(r"libllama-(bench|quantize)-impl\.")
# CUDA's own runtime libraries in a cuda engine's lib/: a thin executable leaves them out and finds
# them at run time (dx.host.cuda_libs); a fat one carries them (DESIGN.md §8).
_CUDA_RUNTIME_LIB = re.compile(r"lib(cudart|cublas|cublasLt)\.so")
CUDA_LIBS_FORMS = ("thin", "fat")

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Bundle:
    """A cached runtime onefile and how we got it."""

    path: Path
    key: str
    reused: bool
    seconds: float
    unpack_spec: str


def runtime_sources() -> dict[str, bytes]:
    """``{"dx/cli.py": bytes, ...}`` for every source file of the runtime packages."""
    import importlib

    files: dict[str, bytes] = {}
    for pkg in RUNTIME_PACKAGES:
        root = Path(importlib.import_module(pkg).__file__ or "").parent
        for p in sorted(root.rglob("*.py")):
            if "__pycache__" in p.parts:
                continue
            files[f"{pkg}/{p.relative_to(root).as_posix()}"] = p.read_bytes()
    return files


def cuda_runtime_files(engine_dir: Path) -> list[Path]:
    """The CUDA runtime libraries (cudart, cuBLAS, cuBLASLt) in a cuda engine's ``lib/``; none elsewhere."""
    lib = engine_dir / "lib"
    return sorted(p for p in lib.iterdir() if _CUDA_RUNTIME_LIB.match(p.name)) if lib.is_dir() else []


def cuda_libs_plan(engine_dir: Path, asked: str | None) -> dict | None:
    """For a cuda engine: ``{"form": thin|fat, "runtime_libs": [{name, bytes}]}``; None for other engines.

    Thin is the default: the release ships cuBLAS once (the runtime pack install.sh puts in a shared
    folder, or the nvidia pip wheels), so no model executable carries its 594 MB again; fat stays
    for a machine that gets one file and nothing else (offline, no installer).
    """
    libs = cuda_runtime_files(engine_dir)
    if not libs:
        return None
    form = asked or "thin"
    if form not in CUDA_LIBS_FORMS:
        raise ConfigurationError(f"--cuda-libs {form}: not one of {', '.join(CUDA_LIBS_FORMS)}",
                                 hint="thin (cuBLAS found at run time) or fat (cuBLAS carried inside)")
    return {"form": form, "runtime_libs": [{"name": p.name, "bytes": p.stat().st_size}
                                           for p in libs if p.is_file() and not p.is_symlink()]}


def engine_files(engine_dir: Path, cuda_libs: str | None = None) -> list[tuple[Path, str]]:
    """(source, path inside the bundle) for the engine files the runtime needs.

    Symlinked library names (``libllama.so`` → ``libllama.so.0``) are carried as
    copies of their target's bytes: onefile payloads hold plain files.
    ``cuda_libs="thin"`` leaves CUDA's runtime libraries out (``libggml-cuda`` stays).
    """
    out: list[tuple[Path, str]] = []
    for rel in ENGINE_FILES:
        src = engine_dir / rel
        if not src.is_file():
            raise ConfigurationError(f"engine directory {engine_dir} lacks {rel}",
                                     hint="rebuild the engine (delete its cache entry)")
        out.append((src, f"{ENGINE_DATA_DIR}/{rel}"))
    # bin/ also holds ggml's loadable backends (libggml-cpu-haswell.so …): ggml looks
    # for them next to the executable; lib/ holds the shared libraries.
    for sub in ("bin", "lib"):
        folder = engine_dir / sub
        if folder.is_dir():
            out += [(src, f"{ENGINE_DATA_DIR}/{sub}/{name}") for src, name in loader_names(folder)
                    if not (cuda_libs == "thin" and sub == "lib" and _CUDA_RUNTIME_LIB.match(name))]
    return out


def loader_names(folder: Path) -> list[tuple[Path, str]]:
    """(real file, name to carry it under) for the shared libraries in ``folder``.

    A library installed as ``libx.so -> libx.so.0 -> libx.so.0.1.2`` is carried
    once, under the name the dynamic loader asks for: the link that points
    straight at the real file (its SONAME, ``libx.so.0``). A library nothing
    links to (ggml's backend modules) keeps its own name. Onefile payloads hold
    plain files, so carrying every alias would triple the size.
    """
    libs = [p for p in sorted(folder.iterdir()) if ".so" in p.name and not _TOOL_ONLY_LIB.match(p.name)]
    real = {p.name: p for p in libs if p.is_file() and not p.is_symlink()}
    out: list[tuple[Path, str]] = []
    pointed: set[str] = set()
    for link in libs:
        if link.is_symlink():
            target = os.readlink(link)
            if target in real:
                out.append((real[target], link.name))
                pointed.add(target)
    out += [(p, name) for name, p in real.items() if name not in pointed]
    return sorted(out, key=lambda t: t[1])


def nuitka_options(*, stage: Path, out_dir: Path, output_name: str, engine: list[tuple[Path, str]],
                   unpack_spec: str, jobs: int = 2) -> list[str]:
    """The exact Nuitka command line (pure: unit-tested, and part of the cache key)."""
    opts = [
        "--mode=onefile",
        f"--jobs={jobs}",
        "--assume-yes-for-downloads",
        f"--output-dir={out_dir}",
        f"--output-filename={output_name}",
        f"--onefile-tempdir-spec={unpack_spec}",
        "--onefile-cache-mode=cached",
        "--onefile-as-archive",
        "--python-flag=no_site",
        "--python-flag=isolated",
        f"--user-plugin={TRIM_PLUGIN}",
        f"--user-plugin={EXEC_PLUGIN}",
        "--include-package=dx",  # every dx command; dxverify modules come in as dx imports them
        # json's C accelerator: Nuitka's anti-bloat leaves it out ("may slow down by using fallback
        # implementation"), and dx parses every request body (dx.server.request_json) and engine answer with it.
        "--include-module=_json",
        "--remove-output",
        "--no-progressbar",
    ]
    opts += [f"--nofollow-import-to={m}" for m in NOFOLLOW]
    opts += [f"--include-data-files={src}={dest}" for src, dest in engine]
    opts.append(str(stage / "dx_main.py"))
    return opts


ENTRY = '''"""Entry point of a compiled dx runtime (generated by dxbuild.bundle.nuitka)."""
from dx.cli import main

main()
'''


def _nuitka_version() -> str:
    try:
        from nuitka.Version import getNuitkaVersion
    except ImportError:
        raise ToolError("Nuitka is not installed",
                        hint=f"python3 -m pip install nuitka=={NUITKA_VERSION}") from None
    return getNuitkaVersion()


def check_build_deps() -> None:
    version = _nuitka_version()
    if version != NUITKA_VERSION:
        raise ToolError(f"Nuitka {version} is installed; DX bundles are built and tested with {NUITKA_VERSION}",
                        hint=f"python3 -m pip install nuitka=={NUITKA_VERSION}")
    try:
        import zstandard  # noqa: F401  (Nuitka compresses the onefile payload with it)
    except ImportError:
        raise ToolError("the Python package 'zstandard' is missing: without it Nuitka writes an "
                        "uncompressed onefile about 3x larger",
                        hint="python3 -m pip install zstandard") from None


def bundle_key(engine_key: str, tier: str, sources: dict[str, bytes], engine: list[tuple[Path, str]],
               dx_version: str, cuda_libs: str | None = None, extra_options: tuple[str, ...] = ()) -> str:
    """Hash of every input of the bundle. Same inputs → same key → cache hit."""
    h = hashlib.sha256()

    def part(label: str, data: bytes) -> None:
        h.update(label.encode() + b"\0" + len(data).to_bytes(8, "little") + data)

    part("format", b"dx-bundle-1")
    part("engine-key", engine_key.encode())
    part("tier", tier.encode())
    if cuda_libs is not None:  # thin and fat bundles of one cuda engine are two cache entries
        part("cuda-libs", cuda_libs.encode())
    part("dx-version", dx_version.encode())
    part("nuitka", _nuitka_version().encode())
    part("python", sys.version.encode())
    part("entry", ENTRY.encode())
    part("builder", Path(__file__).read_bytes())  # this file decides the Nuitka options
    part("trim-plugin", TRIM_PLUGIN.read_bytes())
    part("exec-plugin", EXEC_PLUGIN.read_bytes())
    part("options", json.dumps([NOFOLLOW, ENGINE_FILES, ENGINE_DATA_DIR, "include-package=dx"]).encode())
    if extra_options:
        part("extra-options", json.dumps(list(extra_options)).encode())
    for name in sorted(sources):
        part("src:" + name, sources[name])
    for _src, dest in engine:
        part("engine-file", dest.encode())
    return h.hexdigest()


def nuitka_env(work: Path) -> dict[str, str]:
    """The environment Nuitka runs in: this build's own onefile-compression cache, inside ``work``."""
    env = dict(os.environ)
    env["NUITKA_CACHE_DIR_ONEFILE_COMPRESSION"] = str(work / "onefile-compression")
    env.pop("PYTHONSTARTUP", None)
    return env


def check_payload(binary: Path, log: Path) -> None:
    """A bundle whose onefile payload does not parse whole is never cached (it could not start)."""
    from dxbuild.bundle.payload import read_payload
    from dxverify.errors import MalformedInputError

    try:
        read_payload(binary)
    except MalformedInputError:
        raise ToolError(f"Nuitka wrote {binary} with a damaged onefile payload (an entry that does not parse)",
                        hint=f"build again; see {log}") from None


def ensure_bundle(engine_dir: Path, *, tier: str, engine_key: str, cache: Path | None = None,
                  echo: Echo | None = None, cuda_libs: str | None = None,
                  extra_options: tuple[str, ...] = ()) -> Bundle:
    """The runtime onefile for this engine: from the cache, or compiled now (minutes).

    ``cuda_libs`` ("thin" or "fat") applies to an engine with CUDA runtime libraries; None otherwise.
    ``extra_options`` go to Nuitka after DX's own (and into the key): dxbuild.bundle.foreign's ``--lto=no``.
    """
    from dx import __version__ as dx_version

    t0 = time.monotonic()
    cache = cache or default_cache_dir()
    sources = runtime_sources()
    engine = engine_files(engine_dir, cuda_libs)
    key = bundle_key(engine_key, tier, sources, engine, dx_version, cuda_libs, extra_options)
    entry_dir = cache / "bundles" / key[:16]
    binary = entry_dir / "dx"
    meta_path = entry_dir / "bundle.json"
    unpack_spec = f"{{CACHE_DIR}}/dx/run/{dx_version}-{tier}-{key[:16]}"
    if binary.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
        if meta.get("key") == key and meta.get("size") == binary.stat().st_size:
            return Bundle(binary, key, True, time.monotonic() - t0, unpack_spec)
    check_build_deps()
    (cache / "bundles").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=cache / "bundles"))
    try:
        stage = work / "src"
        for name, data in sources.items():
            dest = stage / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        (stage / "dx_main.py").write_text(ENTRY)
        out = work / "out"
        # Nuitka gives the program the UTF-8 mode of the Python that runs Nuitka (it has no
        # option for it): stdio and file names are UTF-8 whatever the locale (PEP 540), so
        # no locale codec is needed at start (see nuitka_trim.py).
        cmd = [sys.executable, "-X", "utf8", "-m", "nuitka", *nuitka_options(
            stage=stage, out_dir=out, output_name="dx", engine=engine, unpack_spec=unpack_spec), *extra_options]
        env = nuitka_env(work)
        env["PYTHONPATH"] = str(stage)
        log = cache / "bundles" / f"{key[:16]}.log"
        if echo:
            echo(f"compiling the dx runtime with Nuitka {NUITKA_VERSION} (minutes the first time; log: {log})")
        run_cmd(cmd, log=log, cwd=stage, env=env, echo=echo, what="Nuitka (runtime bundle)")
        built = out / "dx"
        if not built.is_file():
            raise ToolError(f"Nuitka finished but wrote no {built}; see {log}")
        check_payload(built, log)
        final = work / "entry"
        final.mkdir()
        os.replace(built, final / "dx")
        (final / "bundle.json").write_text(json.dumps({
            "key": key, "tier": tier, "engine_key": engine_key, "dx_version": dx_version, "cuda_libs": cuda_libs,
            "nuitka": NUITKA_VERSION, "python": sys.version.split()[0], "unpack_spec": unpack_spec,
            "size": (final / "dx").stat().st_size,
            "engine_bytes": sum(src.stat().st_size for src, _ in engine),
        }, indent=2))
        if entry_dir.exists():
            shutil.rmtree(entry_dir)
        os.replace(final, entry_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Bundle(binary, key, False, time.monotonic() - t0, unpack_spec)
