"""The release manifest (``manifest.json`` + ``manifest.txt``) and per-artifact facts.

Every CI job mints one cell and leaves, next to its executable, a small facts
file ``<artifact>.json`` (format below, schema ``ci/schemas/facts.schema.json``)
that says what the file is: tier, os, arch, engine commit, model, what a
machine needs to run it. ``dxbuild manifest DIR`` then gathers the facts of
every job into one manifest without re-deriving anything from the binaries,
and checks each file's size and SHA-256 against its facts on the way.

``manifest.txt`` is the line twin for ``install.sh`` (POSIX sh cannot parse JSON)::

    dx-manifest 1 <dx-version>
    artifact <tier> <os> <arch> <min_driver or -> <file> <size> <sha256>
    runtime-pack <tier> <os> <arch> <min_driver or -> <file> <size> <sha256> <version>

A ``runtime-pack`` line is a tier's shared GPU libraries (dxbuild.release.runtime_pack:
cuBLAS/cudart for cuda13), installed once per machine into
``<runtime dir>/<tier>-<version>``; an install.sh that predates it skips the
line (it reads only ``artifact`` lines). Both are written to a temporary name and renamed into place. The mint's step
(``dxbuild.steps.manifest``) writes one executable's facts; ``dxbuild manifest DIR`` the whole directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from dxbuild.atomic import write_text_atomic
from dxverify.errors import ConfigurationError, IntegrityError, MalformedInputError
from dxverify.hashing import sha256_file

FACTS_FORMAT = 1
MANIFEST_FORMAT = 1
FACTS_SUFFIX = ".json"
_WORD = re.compile(r"^[a-z0-9_-]+$")
_VERSION = re.compile(r"^[0-9][A-Za-z0-9.+_-]*$")
RUNTIME_PACK = "runtime-pack"
KINDS = ("executable", RUNTIME_PACK)
_FILE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
_CPU_VARIANT = re.compile(r"^libggml-cpu-([a-z0-9_]+)\.(so|dll|dylib)$")
# The order x86 variants are tried in, lowest first; the lowest present is the minimum CPU.
_X86_ORDER = ("x64", "sse42", "sandybridge", "ivybridge", "piledriver", "haswell", "skylakex", "cannonlake",
              "cascadelake", "icelake", "cooperlake", "zen4", "alderlake", "sapphirerapids")


def cpu_requirements(engine_dir: Path | None, cmake_flags: dict[str, str]) -> dict[str, Any]:
    """What CPU the engine needs, read from the CPU backend variants actually built."""
    variants: set[str] = set()
    for sub in ("bin", "lib"):  # ggml's loadable backends sit next to llama-server (bin/)
        folder = engine_dir / sub if engine_dir is not None else None
        if folder is not None and folder.is_dir():
            for p in folder.iterdir():
                m = _CPU_VARIANT.match(p.name)
                if m:
                    variants.add(m.group(1))
    ordered = sorted(variants, key=lambda v: (_X86_ORDER.index(v) if v in _X86_ORDER else len(_X86_ORDER), v))
    if ordered:
        minimum = "x86-64 (baseline)" if ordered[0] == "x64" else ordered[0]
    elif cmake_flags.get("GGML_NATIVE", "").upper() == "ON":
        minimum = "the build machine's CPU (GGML_NATIVE=ON)"
    else:
        minimum = "the target architecture's baseline"
    return {"minimum": minimum, "variants": ordered}


def _require(cond: bool, where: Path, what: str) -> None:
    if not cond:
        raise MalformedInputError(f"{where}: {what}", hint="re-run the CI job that minted it")


def check_facts(doc: Any, where: Path) -> dict[str, Any]:
    """Validate a facts document by hand (the schema says the same; this gives one clear line)."""
    _require(isinstance(doc, dict), where, "not a JSON object")
    _require(doc.get("dx_facts") == FACTS_FORMAT, where, f"dx_facts must be {FACTS_FORMAT}")
    for key in ("tier", "os", "arch"):
        _require(isinstance(doc.get(key), str) and bool(_WORD.match(doc[key])), where, f"bad {key!r}")
    _require(isinstance(doc.get("file"), str) and bool(_FILE.match(doc["file"])), where, "bad 'file'")
    _require(isinstance(doc.get("size"), int) and doc["size"] >= 0, where, "bad 'size'")
    _require(isinstance(doc.get("sha256"), str) and bool(re.fullmatch(r"[0-9a-f]{64}", doc["sha256"])),
             where, "bad 'sha256'")
    req = doc.get("requirements")
    _require(isinstance(req, dict), where, "missing 'requirements'")
    md = req.get("min_nvidia_driver")
    _require(md is None or (isinstance(md, int) and 0 < md < 10000), where, "bad 'min_nvidia_driver'")
    _require(isinstance(doc.get("engine"), dict), where, "missing 'engine'")
    _require(doc.get("kind", "executable") in KINDS, where, f"'kind' must be one of {', '.join(KINDS)}")
    if doc.get("kind") == RUNTIME_PACK:
        version = (doc.get("runtime_pack") or {}).get("version")
        _require(isinstance(version, str) and bool(_VERSION.match(version)), where, "bad 'runtime_pack.version'")
    return doc


def write_facts(exe: Path, facts: dict[str, Any]) -> Path:
    dest = exe.with_name(exe.name + FACTS_SUFFIX)
    write_text_atomic(dest, json.dumps(facts, indent=2, sort_keys=True) + "\n")
    return dest


def _trust_files(directory: Path, fname: str) -> dict[str, Any]:
    sigs = [n for n in (fname + ".sig", fname + ".sigstore.json") if (directory / n).is_file()]
    sbom = fname + ".cdx.json"
    return {"signatures": sigs, "sbom": sbom if (directory / sbom).is_file() else None}


def build_manifest(directory: Path, facts: list[dict[str, Any]], dx_version: str) -> dict[str, Any]:
    """The manifest document: one entry per artifact, sorted so equal inputs give equal bytes."""
    artifacts, packs = [], []
    for f in sorted(facts, key=lambda f: (f["tier"], f["os"], f["arch"], f["file"])):
        if f.get("kind") == RUNTIME_PACK:
            packs.append({"file": f["file"], "tier": f["tier"], "os": f["os"], "arch": f["arch"],
                          "size": f["size"], "sha256": f["sha256"], "version": f["runtime_pack"]["version"],
                          "min_nvidia_driver": f["requirements"].get("min_nvidia_driver"),
                          **_trust_files(directory, f["file"])})
            continue
        artifacts.append({
            "file": f["file"], "tier": f["tier"], "os": f["os"], "arch": f["arch"],
            "size": f["size"], "sha256": f["sha256"],
            "engine_commit": (f.get("engine") or {}).get("llama_cpp_commit"),
            "model": f.get("model"),
            **({"draft": f["draft"]} if f.get("draft") else {}),
            **({"projector": f["projector"]} if f.get("projector") else {}),
            **({"adapter": f["adapter"]} if f.get("adapter") else {}),
            **({"modelfile": f["modelfile"]} if f.get("modelfile") else {}),
            "requirements": f["requirements"],
            **_trust_files(directory, f["file"]),
        })
    doc = {"dx_manifest": MANIFEST_FORMAT, "dx_version": dx_version, "artifacts": artifacts}
    if packs:
        doc["runtime_packs"] = packs
    return doc


def manifest_text(doc: dict[str, Any]) -> str:
    """The line-oriented twin that install.sh reads."""
    lines = [f"dx-manifest {doc['dx_manifest']} {doc['dx_version']}"]
    for a in doc["artifacts"]:
        md = a["requirements"].get("min_nvidia_driver")
        lines.append(f"artifact {a['tier']} {a['os']} {a['arch']} {md if md else '-'} "
                     f"{a['file']} {a['size']} {a['sha256']}")
    for p in doc.get("runtime_packs", []):
        md = p.get("min_nvidia_driver")
        lines.append(f"{RUNTIME_PACK} {p['tier']} {p['os']} {p['arch']} {md if md else '-'} "
                     f"{p['file']} {p['size']} {p['sha256']} {p['version']}")
    return "\n".join(lines) + "\n"


def parse_manifest_text(text: str) -> dict[str, Any]:
    """Read manifest.txt back (the tests' round trip; the same rules install.sh applies)."""
    lines = text.splitlines()
    if not lines:
        raise MalformedInputError("manifest.txt is empty")
    head = lines[0].split(" ")
    if len(head) != 3 or head[0] != "dx-manifest" or head[1] != str(MANIFEST_FORMAT):
        raise MalformedInputError(f"manifest.txt line 1 is not 'dx-manifest {MANIFEST_FORMAT} <version>'")
    out, packs = [], []
    for no, line in enumerate(lines[1:], 2):
        parts = line.split(" ")
        if len(parts) == 9 and parts[0] == RUNTIME_PACK:
            _, tier, os_name, arch, md, fname, size, sha, version = parts
            packs.append({"tier": tier, "os": os_name, "arch": arch, "file": fname, "size": int(size),
                          "sha256": sha, "version": version, "min_nvidia_driver": None if md == "-" else int(md)})
            continue
        if len(parts) != 8 or parts[0] != "artifact":
            raise MalformedInputError(f"manifest.txt line {no}: expected 8 fields, got {len(parts)}")
        _, tier, os_name, arch, md, fname, size, sha = parts
        out.append({"tier": tier, "os": os_name, "arch": arch, "min_nvidia_driver": None if md == "-" else int(md),
                    "file": fname, "size": int(size), "sha256": sha})
    return {"dx_version": head[2], "artifacts": out, "runtime_packs": packs}


def write_manifest(directory: Path, doc: dict[str, Any]) -> tuple[Path, Path]:
    j, t = directory / "manifest.json", directory / "manifest.txt"
    write_text_atomic(j, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    write_text_atomic(t, manifest_text(doc))
    return j, t


def gather_facts(directory: Path, *, check_files: bool = True) -> list[dict[str, Any]]:
    """Every ``<artifact>.json`` facts file in ``directory``, validated against its file."""
    directory = Path(directory)
    found = []
    for p in sorted(directory.glob("*" + FACTS_SUFFIX)):
        stem = p.name[: -len(FACTS_SUFFIX)]
        if stem.endswith(".cdx") or not (directory / stem).is_file():
            continue  # an SBOM, a report or the manifest itself: not a facts file
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise MalformedInputError(f"{p} is not valid JSON: {e}") from e
        check_facts(doc, p)
        if doc["file"] != stem:
            raise MalformedInputError(f"{p} describes {doc['file']!r}, not {stem!r}")
        if check_files:
            exe = directory / stem
            size = exe.stat().st_size
            if size != doc["size"] or sha256_file(exe) != doc["sha256"]:
                raise IntegrityError(f"{exe} does not match its facts file {p.name} (size or SHA-256 differ)",
                                     hint="the file changed after it was minted; re-download it")
        found.append(doc)
    if not found:
        raise ConfigurationError(f"{directory} holds no <artifact>.json facts files",
                                 hint="copy each CI job's executable together with its .json next to it")
    return found


def manifest_for_directory(directory: Path) -> tuple[Path, Path]:
    """``dxbuild manifest DIR``: (re)build manifest.json/.txt from the facts files in DIR."""
    from dx import __version__ as dx_version

    facts = gather_facts(directory)
    versions = {f.get("dx_version") for f in facts}
    if len(versions) > 1:
        raise ConfigurationError(f"{directory} mixes artifacts of DX versions {sorted(map(str, versions))}")
    return write_manifest(Path(directory), build_manifest(Path(directory), facts, versions.pop() or dx_version))
