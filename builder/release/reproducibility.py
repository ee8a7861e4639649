"""Is the build reproducible? Build twice from scratch and say exactly what differs, and why.

Two engine builds of the same cell in two fresh cache directories (different
source and build paths, ccache off, so every object is really compiled twice)
and, optionally, two runtime bundles, are compared file by file. For a file
that differs the report names the cause where it can be recognised:

- ``build-id``: only the ELF ``.note.gnu.build-id`` differs (a hash of the rest,
  so some other section differs too, or the linker was given a random id);
- ``embedded path``: the file contains the build's own temporary directory or
  source path (a prefix map did not cover it);
- ``timestamp``: the file contains ``__DATE__``/``__TIME__``-like text or the
  build's wall-clock time (``SOURCE_DATE_EPOCH`` not honoured);
- ``recorded value``: a JSON key that records the build itself (``build_seconds``);
- otherwise the ELF sections whose bytes differ.

The build already sets what removes these (dxbuild.engine.build: ``SOURCE_DATE_EPOCH``,
``-ffile-prefix-map``/``-fdebug-prefix-map``, ``LC_ALL``/``TZ``); this module is how
we know it worked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Echo = Callable[[str], None]
_DATE = re.compile(rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 0-9]\d (19|20)\d\d")
#: JSON keys that describe the build run, not its result (expected to differ).
RUN_RECORD_KEYS = {"build_seconds"}


@dataclass
class FileDifference:
    path: str
    kind: str          # missing, size, content
    causes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"{self.path}: {self.kind}" + (f" ({'; '.join(self.causes)})" if self.causes else "")


@dataclass
class TreeComparison:
    identical: list[str]
    different: list[FileDifference]

    @property
    def reproducible(self) -> bool:
        return not self.different

    def as_json(self) -> dict[str, Any]:
        return {"reproducible": self.reproducible, "identical": self.identical,
                "different": [dataclasses.asdict(d) for d in self.different]}


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def _elf_sections(data: bytes) -> dict[str, bytes] | None:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1 or len(data) < 64:
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shentsize != 64 or shoff + shnum * 64 > len(data) or shstrndx >= shnum:
        return None
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * 64) for i in range(shnum)]
    stroff, strsize = headers[shstrndx][4], headers[shstrndx][5]
    names = data[stroff:stroff + strsize]
    out = {}
    for h in headers:
        name = names[h[0]:names.find(b"\0", h[0])].decode(errors="replace")
        out[name or f"#{len(out)}"] = b"" if h[1] == 8 else data[h[4]:h[4] + h[5]]
    return out


def explain(path: str, a: bytes, b: bytes, hints: list[bytes]) -> list[str]:
    """Why two versions of one file differ (best effort, each cause named)."""
    causes = []
    if path.endswith(".json"):
        try:
            ja, jb = json.loads(a), json.loads(b)
        except ValueError:
            ja = jb = None
        if isinstance(ja, dict) and isinstance(jb, dict):
            keys = sorted(k for k in set(ja) | set(jb) if ja.get(k) != jb.get(k))
            run = [k for k in keys if k in RUN_RECORD_KEYS]
            other = [k for k in keys if k not in RUN_RECORD_KEYS]
            if run:
                causes.append(f"recorded value: {', '.join(run)} (describes the build run)")
            if other:
                causes.append(f"keys differ: {', '.join(other)}")
            return causes
    for h in hints:
        if h and (h in a or h in b):
            causes.append(f"embedded path: contains {h.decode(errors='replace')}")
    if _DATE.search(a) and _DATE.findall(a) != _DATE.findall(b):
        causes.append("timestamp: __DATE__-like text differs")
    sa, sb = _elf_sections(a), _elf_sections(b)
    if sa is not None and sb is not None:
        diff = sorted(n for n in set(sa) | set(sb) if sa.get(n) != sb.get(n))
        if diff == [".note.gnu.build-id"]:
            causes.append("build-id: only the ELF build id differs")
        elif diff:
            causes.append("ELF sections differ: " + ", ".join(diff[:8]) + (" …" if len(diff) > 8 else ""))
    return causes


def compare_trees(a: Path, b: Path, hints: list[bytes] | None = None) -> TreeComparison:
    """Compare two directories (or two files) byte for byte; explain every difference."""
    a, b = Path(a), Path(b)
    if a.is_file() and b.is_file():
        fa, fb = {a.name: a}, {a.name: b}
    else:
        fa, fb = _files(a), _files(b)
    same, diffs = [], []
    for rel in sorted(set(fa) | set(fb)):
        if rel not in fa or rel not in fb:
            diffs.append(FileDifference(rel, "missing", [f"only in {'first' if rel in fa else 'second'} build"]))
            continue
        da, db = fa[rel].read_bytes(), fb[rel].read_bytes()
        if da == db:
            same.append(rel)
            continue
        kind = "size" if len(da) != len(db) else "content"
        diffs.append(FileDifference(rel, kind, explain(rel, da, db, hints or [])))
    return TreeComparison(same, diffs)


def _fresh_cache(root: Path, shared: Path, name: str) -> Path:
    """A cache dir of its own (sources, builds, toolchains) sharing only the downloaded sdist."""
    cache = root / name
    cache.mkdir(parents=True)
    if (shared / "downloads").is_dir():
        (cache / "downloads").symlink_to(shared / "downloads", target_is_directory=True)
    return cache


def repro_engine(tier: str = "cpu", *, workdir: Path | None = None, targets: tuple[str, ...] | None = None,
                 cmake_overrides: dict[str, str] | None = None, keep: bool = False,
                 echo: Echo | None = None) -> dict[str, Any]:
    """Build the ``tier`` engine twice from scratch and compare (minutes: two cold builds)."""
    from dxbuild.engine.build import build_engine
    from dxbuild.paths import cache_dir
    from dxbuild.toolchains.plan import plan_host_cell

    cell, recipe = plan_host_cell(tier)
    if targets:
        recipe = dataclasses.replace(recipe, targets=tuple(targets))
    if cmake_overrides:
        cmake = dict(cell.cmake)
        cmake.update(cmake_overrides)
        cell = dataclasses.replace(cell, cmake=tuple(sorted(cmake.items())))
    root = Path(tempfile.mkdtemp(prefix="dx-repro-", dir=workdir))
    saved = {k: os.environ.get(k) for k in ("CCACHE_DISABLE",)}
    os.environ["CCACHE_DISABLE"] = "1"  # compile every object twice, really
    try:
        dirs, secs = [], []
        for name in ("a", "b"):
            cache = _fresh_cache(root, cache_dir(), name)
            t0 = time.monotonic()
            dirs.append(build_engine(cell, recipe, cache=cache, echo=echo))
            secs.append(round(time.monotonic() - t0, 1))
        hints = [str(root).encode(), str(root / "a").encode(), str(root / "b").encode()]
        cmp = compare_trees(dirs[0], dirs[1], hints)
        return {"what": f"engine {cell.name}", "targets": list(recipe.targets),
                "cmake_overrides": cmake_overrides or {}, "build_seconds": secs,
                "dirs": [str(d) for d in dirs] if keep else None, **cmp.as_json()}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def repro_bundle(engine_dir: Path, *, tier: str, engine_key: str, workdir: Path | None = None,
                 echo: Echo | None = None) -> dict[str, Any]:
    """Compile the runtime bundle twice (fresh bundle caches) and compare (minutes: two Nuitka runs)."""
    from dxbuild.bundle.nuitka import ensure_bundle

    root = Path(tempfile.mkdtemp(prefix="dx-repro-bundle-", dir=workdir))
    try:
        outs, secs = [], []
        for name in ("a", "b"):
            t0 = time.monotonic()
            outs.append(ensure_bundle(engine_dir, tier=tier, engine_key=engine_key, cache=root / name, echo=echo))
            secs.append(round(time.monotonic() - t0, 1))
        cmp = compare_trees(outs[0].path, outs[1].path, [str(root).encode()])
        sha = [hashlib.sha256(o.path.read_bytes()).hexdigest() for o in outs]
        return {"what": "runtime bundle", "build_seconds": secs, "sha256": sha, **cmp.as_json()}
    finally:
        shutil.rmtree(root, ignore_errors=True)
