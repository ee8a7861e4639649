"""Step: a CycloneDX 1.6 JSON SBOM per executable (``<artifact>.cdx.json``).

What is inside a minted file, so a user can answer "am I affected by CVE-X?"
without running it: llama.cpp (commit, source hash, DX's patches), the
compilers and GPU toolkits that built it, the Python and Nuitka that made the
runtime, every Python distribution compiled into the runtime (with versions
and licenses), and the embedded model (source, SHA-256, license).

Which Python distributions are inside: the bundle step may record them in
``ctx.facts["bundle_python_distributions"]`` (``[{"name", "version"}]``, e.g.
from Nuitka's compilation report); otherwise we take the runtime's import
closure — the distributions providing what ``dx``/``dxverify`` import, plus
their requirements — minus what the bundle tells Nuitka not to follow.
Every document is validated against the CycloneDX schema before it is written.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import json
import os
import re
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dxbuild.context import ArtifactType, BuildContext
from dxbuild.pipeline import Skip
from dxverify.errors import MalformedInputError
from dxverify.signatures import sha256_file

name = "sbom"
SBOM_SUFFIX = ".cdx.json"
LLAMA_CPP_REPO = "https://github.com/ggml-org/llama.cpp"
RUNTIME_PACKAGES = ("dx", "dxverify")
# The runtime's own distribution: described as the SBOM's subject, not as a dependency.
OWN_DISTRIBUTIONS = {"dxbuild"}


def _dist_license(dist: md.Distribution) -> str | None:
    meta = dist.metadata
    expr = meta.get("License-Expression")
    if expr:
        return expr.strip()
    lic = (meta.get("License") or "").strip()
    if lic and "\n" not in lic and len(lic) < 80:
        return lic
    for c in meta.get_all("Classifier") or []:
        if c.startswith("License :: ") and c.count("::") >= 2:
            return c.split("::")[-1].strip()
    return None


def _imports_of(paths: list[Path]) -> set[str]:
    names: set[str] = set()
    for p in paths:
        try:
            tree = ast.parse(p.read_bytes(), filename=str(p))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def runtime_distributions(exclude: set[str] | None = None) -> list[dict[str, Any]]:
    """Distributions in the runtime's import closure (the fallback when Nuitka's list is absent)."""
    if exclude is None:
        try:
            from dxbuild.bundle import NOFOLLOW
        except ImportError:  # pragma: no cover - bundle module always ships with dxbuild
            NOFOLLOW = ()
        exclude = set(NOFOLLOW)
    from packaging.requirements import Requirement

    files: list[Path] = []
    for pkg in RUNTIME_PACKAGES:
        root = Path(importlib.import_module(pkg).__file__ or "").parent
        files += [p for p in root.rglob("*.py") if "__pycache__" not in p.parts]
    providers = md.packages_distributions()
    todo = sorted({d for m in _imports_of(files) - exclude for d in providers.get(m, [])})
    seen: dict[str, md.Distribution] = {}
    while todo:
        dname = todo.pop()
        key = dname.lower().replace("_", "-")
        if key in seen or key in OWN_DISTRIBUTIONS or key in exclude:
            continue
        try:
            dist = md.distribution(dname)
        except md.PackageNotFoundError:
            continue
        seen[key] = dist
        for req in dist.requires or []:
            r = Requirement(req)
            if r.marker is not None and not r.marker.evaluate({"extra": ""}):
                continue
            todo.append(r.name)
    return [{"name": d.metadata["Name"], "version": d.version, "license": _dist_license(d)}
            for _, d in sorted(seen.items())]


def _license(value: str | None):
    from cyclonedx.contrib.license.factories import LicenseFactory

    return [LicenseFactory().make_from_string(value)] if value else []


def _patches(patches: list[dict[str, Any]]):
    """DX's own patches on upstream llama.cpp, as CycloneDX pedigree (names point into recipes/patches/)."""
    if not patches:
        return None
    from cyclonedx.model import XsUri
    from cyclonedx.model.component import Diff, Patch, PatchClassification, Pedigree

    return Pedigree(patches=[
        Patch(type=PatchClassification.UNOFFICIAL, diff=Diff(url=XsUri(f"recipes/patches/{p.get('file')}")))
        for p in patches
    ])


def _sha256(hexdigest: str):
    from cyclonedx.model import HashAlgorithm, HashType

    return [HashType(alg=HashAlgorithm.SHA_256, content=hexdigest)]


def build_bom(
    *,
    exe_name: str,
    exe_sha256: str,
    dx_version: str,
    engine: dict[str, Any],
    python_dists: list[dict[str, Any]],
    model: dict[str, Any] | None,
    nuitka_version: str | None,
    timestamp: datetime,
    native_libs: list[dict[str, Any]] | None = None,
):
    """The CycloneDX Bom for one executable (pure; unit-tested)."""
    native_libs = native_libs or []
    from cyclonedx.model import ExternalReference, ExternalReferenceType, Property, XsUri
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentScope, ComponentType
    from packageurl import PackageURL

    subject = Component(
        name=exe_name, version=dx_version, type=ComponentType.APPLICATION, bom_ref="dx-executable",
        hashes=_sha256(exe_sha256), licenses=_license("Apache-2.0"),
        description="DX self-contained LLM executable (llama.cpp engine + dx runtime"
                    + (" + embedded model)" if model else ")"),
    )
    components: list[Component] = []
    commit = engine.get("llama_cpp_commit") or "unknown"
    props = [Property(name="dx:engine:key", value=str(engine.get("key")))]
    if engine.get("source"):
        props.append(Property(name="dx:engine:source", value=str(engine["source"])))
    if engine.get("source_sha256"):
        props.append(Property(name="dx:engine:source_sha256", value=str(engine["source_sha256"])))
    for p in engine.get("patches", []):
        props.append(Property(name="dx:engine:patch", value=f"{p.get('file')} sha256:{p.get('sha256')}"))
    for flag, val in sorted(dict(engine.get("cmake_flags", {})).items()):
        props.append(Property(name="dx:engine:cmake", value=f"{flag}={val}"))
    for arch in engine.get("cuda_archs", []):
        props.append(Property(name="dx:engine:cuda_arch", value=str(arch)))
    components.append(Component(
        name="llama.cpp", version=commit, type=ComponentType.LIBRARY, bom_ref="llama.cpp",
        licenses=_license("MIT"), pedigree=_patches(engine.get("patches", [])),
        purl=PackageURL(type="github", namespace="ggml-org", name="llama.cpp", version=commit),
        external_references=[ExternalReference(type=ExternalReferenceType.VCS, url=XsUri(LLAMA_CPP_REPO))],
        properties=props,
    ))
    # Toolchain: compilers are build-time only (scope excluded); GPU runtimes ship inside.
    toolchain = dict(engine.get("toolchain", {}))
    tc_name = toolchain.pop("name", None)
    for tool, version in sorted(toolchain.items()):
        shipped = any(k in tool.lower() for k in ("cudart", "cublas", "runtime", "vulkan-loader"))
        components.append(Component(
            name=tool, version=str(version), type=ComponentType.LIBRARY if shipped else ComponentType.APPLICATION,
            bom_ref=f"toolchain:{tool}", scope=ComponentScope.REQUIRED if shipped else ComponentScope.EXCLUDED,
            properties=[Property(name="dx:toolchain", value=str(tc_name))] if tc_name else [],
        ))
    py = ".".join(map(str, sys.version_info[:3]))
    components.append(Component(
        name="cpython", version=py, type=ComponentType.FRAMEWORK, bom_ref="cpython", licenses=_license("PSF-2.0"),
        purl=PackageURL(type="generic", name="cpython", version=py),
    ))
    if nuitka_version:
        components.append(Component(
            name="nuitka", version=nuitka_version, type=ComponentType.APPLICATION, bom_ref="nuitka",
            licenses=_license("Apache-2.0"), scope=ComponentScope.REQUIRED,
            purl=PackageURL(type="pypi", name="nuitka", version=nuitka_version),
            description="compiler of the runtime; its onefile bootstrap and helpers are inside the executable",
        ))
    for d in python_dists:
        components.append(Component(
            name=d["name"], version=d["version"], type=ComponentType.LIBRARY,
            bom_ref=f"pypi:{d['name']}", licenses=_license(d.get("license")),
            purl=PackageURL(type="pypi", name=d["name"].lower(), version=d["version"]),
        ))
    for lib in native_libs:
        components.append(Component(
            name=lib["name"], version=lib.get("version"), type=ComponentType.LIBRARY,
            bom_ref=f"native:{lib['name']}", description=lib.get("description"),
            properties=[Property(name="dx:bundled-file", value=lib["file"])],
        ))
    if model:
        components.append(Component(
            name=model["name"], type=ComponentType.MACHINE_LEARNING_MODEL, bom_ref="model",
            version=model["sha256"][:12], hashes=_sha256(model["sha256"]), licenses=_license(model.get("license")),
            properties=[Property(name="dx:model:source", value=str(model.get("source"))),
                        Property(name="dx:model:size", value=str(model.get("size")))],
        ))
    bom = Bom(components=components)
    bom.serial_number = uuid.uuid5(uuid.NAMESPACE_URL, f"dx-sbom:{exe_name}:{exe_sha256}")
    bom.metadata.component = subject
    bom.metadata.timestamp = timestamp
    bom.register_dependency(subject, components)
    return bom


def bom_to_json(bom) -> str:
    """Serialise as CycloneDX 1.6 JSON and validate it against the official schema."""
    from cyclonedx.output.json import JsonV1Dot6
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    text = JsonV1Dot6(bom).output_as_string(indent=2)
    err = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if err is not None:  # a bug in this module, not in the user's input
        raise MalformedInputError(f"generated SBOM is not valid CycloneDX 1.6: {err}")
    return text + "\n"


_NATIVE = re.compile(r"^(lib[A-Za-z0-9_+-]+?)(\.so(\.\d+)*)$")


def bundled_native_libraries(bundle: Path) -> list[dict[str, Any]]:
    """Shared libraries Nuitka put into the runtime beside the engine (OpenSSL, libffi, ...).

    They come from the Python that compiled the runtime; the versions we can know
    (OpenSSL's, from that Python's ``ssl`` module) are recorded, the rest by file name.
    """
    from dxbuild.onefile_payload import read_payload

    out = []
    for e in read_payload(bundle).entries:
        if e.name.startswith("engine/") or "/" in e.name:
            continue
        m = _NATIVE.match(e.name)
        if not m:
            continue
        lib = {"name": m.group(1), "file": e.name, "version": None, "description": None}
        if m.group(1) in ("libcrypto", "libssl"):
            import ssl

            m_ver = re.match(r"OpenSSL (\S+)", ssl.OPENSSL_VERSION)
            lib["version"] = m_ver.group(1) if m_ver else None
            lib["description"] = f"{ssl.OPENSSL_VERSION} (linked by the building Python's ssl/hashlib)"
        out.append(lib)
    return sorted(out, key=lambda x: x["name"])


def _timestamp() -> datetime:
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde and sde.isdigit():
        return datetime.fromtimestamp(int(sde), tz=timezone.utc)
    return datetime.now(tz=timezone.utc).replace(microsecond=0)


def run(ctx: BuildContext) -> None:
    from dx import __version__ as dx_version

    exes = ctx.of(ArtifactType.EXECUTABLE)
    if not exes:
        raise Skip("no executables were minted")
    engine: dict[str, Any] = {}
    engines = ctx.of(ArtifactType.ENGINE_DIR)
    if engines:
        try:
            engine = json.loads((engines[0].path / "engine.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise MalformedInputError(f"{engines[0].path / 'engine.json'} cannot be read: {e}") from e
    dists = ctx.facts.get("bundle_python_distributions")
    if dists is None:
        dists = runtime_distributions()
    bundle = ctx.facts.get("bundle")
    nuitka_version = None
    if bundle is not None:
        try:
            from dxbuild.bundle import NUITKA_VERSION as nuitka_version
        except ImportError:  # pragma: no cover
            nuitka_version = None
    resolved = ctx.facts.get("model")
    model = None
    if resolved is not None:
        model = {"name": resolved.name, "source": resolved.source, "sha256": resolved.sha256,
                 "size": resolved.size, "license": resolved.license}
    bundles = ctx.of(ArtifactType.BUNDLE)
    native = bundled_native_libraries(bundles[0].path) if bundles and bundles[0].path.is_file() else []
    for a in exes:
        sha = a.extra.get("sha256") or sha256_file(a.path)
        bom = build_bom(exe_name=a.path.name, exe_sha256=sha, dx_version=dx_version, engine=engine,
                        python_dists=dists, model=model, nuitka_version=nuitka_version, timestamp=_timestamp(),
                        native_libs=native)
        dest = a.path.with_name(a.path.name + SBOM_SUFFIX)
        tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
        tmp.write_text(bom_to_json(bom), encoding="utf-8")
        os.replace(tmp, dest)
        ctx.add(ArtifactType.SBOM, dest, describes=a.path.name)
