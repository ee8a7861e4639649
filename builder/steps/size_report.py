"""Step: what each executable's bytes are, against the tier's size budget.

Each minted file splits exactly into: the engine (``llama-server``, libllama,
libggml-base), the backend libraries (CPU variants, CUDA/Vulkan modules and
runtimes), the Python runtime (the compiled ``dx`` and its extension modules),
Nuitka's overhead (the onefile bootstrap and per-file headers), the model and
DX's padding + trailer. The engine, backend and Python parts are read from the
Nuitka archive headers (dxbuild.bundle.payload): exact stored (compressed)
bytes and unpacked bytes per file. With a draft embedded (trailer version 2) the
"model" component is both GGUFs, and ``ggufs`` lists each entry's role and bytes,
so the report shows the two sizes and the executable against their sum. A
``--modelfile`` executable's report names its Modelfile too (``modelfile``: the
file's SHA-256 and the bytes its record takes in the metadata, inside "trailer").

The budget is the tier recipe's ``size_budget_mb``: the unpacked engine
directory (engine + backend libraries) must stay under it. Over budget fails
the build, naming what grew against ``--previous-size-report`` when given.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from dxbuild.bundle.payload import read_payload
from dxbuild.context import ArtifactType, BuildContext, Skip
from dxbuild.release.reports import REPORT_FORMAT, load_report, write_report
from dxverify.errors import ConfigurationError
from dxverify.trailer import find_trailer

name = "size report"

COMPONENTS = ("engine", "backend", "python", "nuitka", "model", "trailer")
LABELS = {
    "engine": "engine (llama-server, libllama, libggml-base)",
    "backend": "backend libraries (CPU variants, GPU)",
    "python": "Python runtime (dx compiled, extension modules)",
    "nuitka": "Nuitka overhead (onefile bootstrap, headers)",
    "model": "model (GGUF)",
    "trailer": "padding + metadata + trailer",
}
_ENGINE_DIR = "engine/"
_BACKEND = re.compile(r"^(lib)?(ggml-(?!base)[a-z0-9_-]+|cu[a-z]*|nv[a-z]*|vulkan[a-z0-9_-]*)[.-]")


class OverBudget(ConfigurationError):
    """A tier's engine directory is larger than its recipe allows."""


def component_of(entry_name: str) -> str:
    """Which part of the executable one onefile entry belongs to."""
    if not entry_name.startswith(_ENGINE_DIR):
        return "python"
    base = entry_name.rsplit("/", 1)[-1]
    return "backend" if _BACKEND.match(base) else "engine"


def measure(exe: Path, runtime_size: int | None = None) -> dict[str, Any]:
    """Split one executable into COMPONENTS (bytes in the file, and unpacked where it applies)."""
    exe = Path(exe)
    total = exe.stat().st_size
    em = find_trailer(exe)
    ggufs = [{"role": e.role, "bytes": e.length} for e in em.entries] if em is not None else []
    if em is not None:
        model = sum(g["bytes"] for g in ggufs)
        if runtime_size is None:  # the bundle ends before the zero padding up to the model
            runtime_size = _strip_zero_padding(exe, em.offset)
    else:
        model = 0
        runtime_size = total if runtime_size is None else runtime_size
    payload = read_payload(exe, limit=runtime_size)
    stored = dict.fromkeys(COMPONENTS, 0)
    unpacked = dict.fromkeys(("engine", "backend", "python"), 0)
    files: list[dict[str, Any]] = []
    for e in payload.entries:
        c = component_of(e.name)
        stored[c] += e.stored
        unpacked[c] += e.size
        files.append({"name": e.name, "component": c, "stored": e.stored, "unpacked": e.size})
    stored["nuitka"] = runtime_size - payload.stored_total
    stored["model"] = model
    stored["trailer"] = total - runtime_size - model
    assert sum(stored.values()) == total
    files.sort(key=lambda f: -f["stored"])
    out = {"file": exe.name, "total": total, "components": stored, "unpacked": unpacked,
           "largest_files": files[:12], "ggufs": ggufs}
    record = em.metadata.get("modelfile") if em is not None else None
    if isinstance(record, dict):
        out["modelfile"] = {"sha256": em.metadata.get("modelfile_sha256"),  # type: ignore[union-attr]
                            "record_bytes": len(json.dumps(record, separators=(",", ":")).encode("utf-8"))}
    return out


def _strip_zero_padding(exe: Path, offset: int) -> int:
    """Where the runtime ends in a minted file: the ELF's own end, else before the zero padding."""
    with open(exe, "rb") as f:
        elf_end = _elf_end(f)
        if elf_end is not None and offset - 65536 < elf_end <= offset:
            return elf_end
        start = max(0, offset - 65536)
        f.seek(start)
        head = f.read(offset - start)
    return start + len(head.rstrip(b"\0"))


def _elf_end(f: Any) -> int | None:
    """End of a 64-bit little-endian ELF: the furthest of its section table and section contents."""
    f.seek(0)
    ident = f.read(64)
    if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
        return None
    shoff, = struct.unpack_from("<Q", ident, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", ident, 0x3A)
    if shentsize != 64 or not 0 < shnum < 65536:
        return None
    end = shoff + shnum * shentsize
    f.seek(shoff)
    table = f.read(shnum * shentsize)
    if len(table) != shnum * shentsize:
        return None
    for i in range(shnum):
        sh_type, = struct.unpack_from("<I", table, i * 64 + 4)
        off, size = struct.unpack_from("<QQ", table, i * 64 + 0x18)
        if sh_type != 8:  # SHT_NOBITS occupies no file bytes
            end = max(end, off + size)
    return end


def check_budget(entry: dict[str, Any], budget_mb: int | None, previous: dict[str, Any] | None) -> dict[str, Any]:
    """Budget verdict for one measured artifact; raises OverBudget naming what grew."""
    engine_dir = entry["unpacked"]["engine"] + entry["unpacked"]["backend"]
    verdict: dict[str, Any] = {"limit_mb": budget_mb, "engine_dir_bytes": engine_dir,
                               "what": "unpacked engine directory (engine + backend libraries)"}
    growth = _growth(entry, previous)
    verdict["growth"] = growth
    if not budget_mb:
        verdict["ok"] = None
        return verdict
    verdict["ok"] = engine_dir <= budget_mb * 1_000_000
    if not verdict["ok"]:
        over = f"{entry['file']}: engine directory is {engine_dir / 1e6:.1f} MB, over the tier budget of {budget_mb} MB"
        if growth:
            grew = ", ".join(f"{g['component']} +{g['delta'] / 1e6:.2f} MB" for g in growth if g["delta"] > 0)
            files = ", ".join(f"{f['name']} +{f['delta'] / 1e6:.2f} MB" for f in _file_growth(entry, previous)[:3])
            detail = f"grew since the previous report: {grew or 'nothing'}" + (f" ({files})" if files else "")
        else:
            biggest = max(("engine", "backend"), key=lambda c: entry["unpacked"][c])
            detail = f"largest part: {LABELS[biggest]} {entry['unpacked'][biggest] / 1e6:.1f} MB"
        raise OverBudget(f"{over}; {detail}", hint="raise size_budget_mb in recipes/tiers.toml or shrink the build")
    return verdict


def _previous_entry(entry: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any] | None:
    if not previous:
        return None
    for a in previous.get("artifacts", []):
        if a.get("file") == entry["file"]:
            return a
    return None


def _growth(entry: dict[str, Any], previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    prev = _previous_entry(entry, previous)
    if prev is None:
        return []
    out = []
    for c in ("engine", "backend", "python"):
        before = int(prev.get("unpacked", {}).get(c, 0))
        out.append({"component": c, "before": before, "after": entry["unpacked"][c],
                    "delta": entry["unpacked"][c] - before})
    return sorted(out, key=lambda g: -g["delta"])


def _file_growth(entry: dict[str, Any], previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    prev = _previous_entry(entry, previous)
    if prev is None:
        return []
    before = {f["name"]: f["unpacked"] for f in prev.get("largest_files", [])}
    grew = [{"name": f["name"], "delta": f["unpacked"] - before.get(f["name"], 0)}
            for f in entry["largest_files"] if f["unpacked"] > before.get(f["name"], 0)]
    return sorted(grew, key=lambda g: -g["delta"])


def cuda_libs_entry(entry: dict[str, Any], cuda: dict[str, Any], thin_budget_mb: int | None) -> dict[str, Any]:
    """Thin and fat side by side for one cuda executable; raises OverBudget for a thin one over its budget.

    Only the form that was minted is measured; the other one's engine directory is this one's
    plus or minus the cuBLAS/cudart files (unpacked bytes, exact).
    """
    libs = sum(int(f["bytes"]) for f in cuda["runtime_libs"])
    engine_dir = entry["unpacked"]["engine"] + entry["unpacked"]["backend"]
    no_model = entry["total"] - entry["components"]["model"] - entry["components"]["trailer"]
    thin = cuda["form"] == "thin"
    out = {"form": cuda["form"], "runtime_libs_bytes": libs,
           "engine_dir_thin_bytes": engine_dir if thin else engine_dir - libs,
           "engine_dir_fat_bytes": engine_dir + libs if thin else engine_dir,
           "executable_without_model_bytes": no_model, "thin_budget_mb": thin_budget_mb if thin else None}
    if thin and thin_budget_mb:
        out["thin_ok"] = no_model <= thin_budget_mb * 1_000_000
        if not out["thin_ok"]:
            raise OverBudget(f"{entry['file']}: thin executable without its model is {no_model / 1e6:.1f} MB, "
                             f"over the tier's thin budget of {thin_budget_mb} MB",
                             hint="raise thin_size_budget_mb in recipes/tiers.toml or narrow cuda_archs")
    return out


def size_report(exes: list[tuple[Path, str, int | None, int | None]], out_dir: Path,
                previous: Path | None = None, cuda: dict[str, Any] | None = None,
                thin_budget_mb: int | None = None) -> tuple[dict[str, Any], list[Path]]:
    """Measure ``(exe, tier, budget_mb, runtime_size)`` each; write size-report.{json,md,svg}.

    The report is written even when a tier is over budget (so the numbers can
    be looked at); the OverBudget error is raised afterwards. ``cuda`` (the
    bundle step's thin/fat plan) adds both forms' sizes to each entry.
    """
    prev = load_report(previous, "size") if previous else None
    artifacts, failure = [], None
    for exe, tier, budget_mb, runtime_size in exes:
        entry = measure(exe, runtime_size)
        entry["tier"] = tier
        try:
            entry["budget"] = check_budget(entry, budget_mb, prev)
        except OverBudget as e:
            entry["budget"] = {"ok": False, "limit_mb": budget_mb, "error": str(e),
                               "engine_dir_bytes": entry["unpacked"]["engine"] + entry["unpacked"]["backend"],
                               "growth": _growth(entry, prev)}
            failure = failure or e
        if cuda:
            try:
                entry["cuda_libs"] = cuda_libs_entry(entry, cuda, thin_budget_mb)
            except OverBudget as e:
                failure = failure or e
                entry["cuda_libs"] = {"form": cuda["form"], "error": str(e)}
        artifacts.append(entry)
    doc = {"report": "size", "format": REPORT_FORMAT, "labels": LABELS, "components": list(COMPONENTS),
           "artifacts": artifacts}
    paths = write_report(out_dir, "size-report", doc)
    if failure:
        raise failure
    return doc, paths


def run(ctx: BuildContext) -> None:
    exes = ctx.of(ArtifactType.EXECUTABLE)
    if not exes:
        raise Skip("no executables were minted")
    bundles = ctx.of(ArtifactType.BUNDLE)
    runtime_size = bundles[0].path.stat().st_size if bundles and bundles[0].path.is_file() else None
    budget = getattr(ctx.cell, "size_budget_mb", None) or None
    items = [(a.path, a.extra.get("tier") or ctx.cell.tier, budget, runtime_size) for a in exes]
    cuda = ctx.cuda_libs
    thin_budget = None
    if cuda:
        from dxmatrix.recipes import get_tier

        thin_budget = get_tier(ctx.cell.tier).thin_size_budget_mb
    _, paths = size_report(items, ctx.out_dir, ctx.options.previous_size_report, cuda, thin_budget)
    for p in paths:
        ctx.add(ArtifactType.REPORT, p, report="size")
