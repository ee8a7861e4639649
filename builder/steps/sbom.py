"""Step: a CycloneDX 1.6 JSON SBOM per executable (``<artifact>.cdx.json``).

What is inside a minted file, so a user can answer "am I affected by CVE-X?"
without running it: llama.cpp (commit, source hash, DX's patches), the
compilers and GPU toolkits that built it, the Python and Nuitka that made the
runtime, every Python distribution compiled into the runtime (with versions
and licenses), and the embedded model (source, SHA-256, license) — and a
``--draft`` as a second model component (bom-ref ``draft-model``, property
``dx:model:role`` = ``draft``), a ``--mmproj`` likewise (bom-ref
``projector-model``, ``dx:model:role`` = ``projector``) and an ``--adapter``
(bom-ref ``adapter-model``, ``dx:model:role`` = ``adapter``).

Which Python distributions are inside: the bundle step records them in
``ctx.python_distributions`` (``[{"name", "version"}]``);
otherwise we take the runtime's import closure — the distributions providing
what ``dx``/``dxverify`` import, plus their requirements — minus what the
bundle tells Nuitka not to follow.

All of that belongs to the bundle, not to one mint: those components are built
with cyclonedx-python-lib and validated against the CycloneDX 1.6 schema once
per bundle, and kept in its cache entry (``sbom-part.json`` beside
``bundle.json``, keyed by the bundle key and everything else that went into
it). A mint adds only what is its own — the executable (the SBOM's subject,
with its SHA-256) and the model — as plain JSON shaped exactly as the library
writes it (tests/trust/test_sbom.py compares the two and validates the output
with the schema), checks those fields, and writes. No cyclonedx or jsonschema
import on the mint path, which was most of the step's second.

Equal inputs give equal bytes: the timestamp is ``SOURCE_DATE_EPOCH``, else the
fixed epoch the engine is built with (see :func:`sbom_timestamp`), and the
serial number is a UUID derived from the rest of the document.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib
import json
import os
import re
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dxbuild.atomic import write_text_atomic
from dxbuild.context import ArtifactType, BuildContext, Skip
from dxverify.errors import MalformedInputError
from dxverify.hashing import sha256_file

name = "sbom"
SBOM_SUFFIX = ".cdx.json"
LLAMA_CPP_REPO = "https://github.com/ggml-org/llama.cpp"
RUNTIME_PACKAGES = ("dx", "dxverify")
# The runtime's own distribution: described as the SBOM's subject, not as a dependency.
OWN_DISTRIBUTIONS = {"dxbuild"}
SUBJECT_REF = "dx-executable"
DX_LICENSE = "Apache-2.0"
#: The bundle's share of every SBOM, in its cache entry (beside bundle.json).
PART_NAME = "sbom-part.json"
PART_FORMAT = 1
_SCHEMA_URL = "http://cyclonedx.org/schema/bom-1.6.schema.json"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SERIAL = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _dist_license(dist: Any) -> str | None:
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
            from dxbuild.bundle.nuitka import NOFOLLOW
        except ImportError:  # pragma: no cover - bundle module always ships with dxbuild
            NOFOLLOW = ()
        exclude = set(NOFOLLOW)
    import importlib.metadata as md

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


DRAFT_REF = "draft-model"
PROJECTOR_REF = "projector-model"
ADAPTER_REF = "adapter-model"


def _further_models(draft: dict[str, Any] | None, projector: dict[str, Any] | None,
                    adapter: dict[str, Any] | None) -> list[tuple[str, dict[str, Any], str]]:
    """(role, record, bom-ref) of each model beside the main one, in the order both writers list them."""
    return [(role, doc, ref) for role, doc, ref in (("draft", draft, DRAFT_REF), ("projector", projector, PROJECTOR_REF),
                                                     ("adapter", adapter, ADAPTER_REF)) if doc]


def _subject_description(model: dict[str, Any] | None, draft: dict[str, Any] | None = None,
                         projector: dict[str, Any] | None = None, adapter: dict[str, Any] | None = None) -> str:
    return ("DX self-contained LLM executable (llama.cpp engine + dx runtime"
            + (" + embedded model" if model else "") + (" + draft model" if draft else "")
            + (" + vision projector" if projector else "") + (" + LoRA adapter" if adapter else "") + ")")


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
    serial: uuid.UUID | None = None,
    draft: dict[str, Any] | None = None,
    projector: dict[str, Any] | None = None,
    adapter: dict[str, Any] | None = None,
):
    """The CycloneDX Bom for one executable (pure; the reference :func:`mint_document` is tested against)."""
    native_libs = native_libs or []
    from cyclonedx.model import ExternalReference, ExternalReferenceType, Property, XsUri
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentScope, ComponentType
    from packageurl import PackageURL

    subject = Component(
        name=exe_name, version=dx_version, type=ComponentType.APPLICATION, bom_ref=SUBJECT_REF,
        hashes=_sha256(exe_sha256), licenses=_license(DX_LICENSE),
        description=_subject_description(model, draft, projector, adapter),
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
    models: list[tuple[str | None, dict[str, Any], str]] = (
        [(None, model, "model"), *_further_models(draft, projector, adapter)] if model else [])
    for role, doc, ref in models:
        components.append(Component(
            name=doc["name"], type=ComponentType.MACHINE_LEARNING_MODEL, bom_ref=ref,
            version=doc["sha256"][:12], hashes=_sha256(doc["sha256"]), licenses=_license(doc.get("license")),
            properties=[Property(name="dx:model:source", value=str(doc.get("source"))),
                        Property(name="dx:model:size", value=str(doc.get("size"))),
                        *([Property(name="dx:model:role", value=role)] if role else [])],
        ))
    bom = Bom(components=components)
    bom.serial_number = serial or uuid.uuid5(uuid.NAMESPACE_URL, f"dx-sbom:{exe_name}:{exe_sha256}")
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
    from dxbuild.bundle.payload import read_payload

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




# --------------------------------------------------------------------------- the bundle's part
def bundle_components(*, engine: dict[str, Any], python_dists: list[dict[str, Any]],
                      nuitka_version: str | None, native_libs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The components every executable of one bundle shares, as CycloneDX 1.6 JSON.

    Made by the library (build_bom) and validated against the schema here, as part
    of a whole document with a placeholder subject, so the cached part is known valid.
    """
    bom = build_bom(exe_name="dx-bundle", exe_sha256="0" * 64, dx_version="0", engine=engine,
                    python_dists=python_dists, model=None, nuitka_version=nuitka_version,
                    timestamp=datetime.fromtimestamp(0, tz=timezone.utc), native_libs=native_libs)
    return json.loads(bom_to_json(bom))["components"]


def _part_key(bundle_key: str | None, engine: dict[str, Any], dists: list[dict[str, Any]] | None,
              nuitka_version: str | None) -> str:
    """Everything the bundle's part is made from (the bundle key covers the bundle's own bytes)."""
    from cyclonedx import __version__ as lib

    h = hashlib.sha256(json.dumps([PART_FORMAT, bundle_key, engine, dists, nuitka_version, sys.version, lib],
                                  sort_keys=True, default=str).encode())
    h.update(Path(__file__).read_bytes())  # this module decides the components' shape
    return h.hexdigest()


def bundle_part(ctx: BuildContext, engine: dict[str, Any]) -> list[dict[str, Any]]:
    """The bundle's components: from its cache entry, else made now and kept there.

    Without a bundle file (a context assembled by hand) they are made every time.
    """
    dists = ctx.python_distributions
    bundles = [b for b in ctx.of(ArtifactType.BUNDLE) if b.path.is_file()]
    bundle = bundles[0] if bundles else None
    nuitka_version = None
    if bundle is not None:
        from dxbuild.bundle.nuitka import NUITKA_VERSION as nuitka_version
    kept = bundle.path.with_name(PART_NAME) if bundle is not None else None
    key = _part_key(str(bundle.extra.get("key")) if bundle else None, engine, dists, nuitka_version)
    if kept is not None:
        try:
            doc = json.loads(kept.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and doc.get("key") == key and isinstance(doc.get("components"), list):
                return doc["components"]
        except (OSError, ValueError):
            pass
    components = bundle_components(
        engine=engine, python_dists=runtime_distributions() if dists is None else dists,
        nuitka_version=nuitka_version, native_libs=bundled_native_libraries(bundle.path) if bundle else [])
    if kept is not None:
        with contextlib.suppress(OSError):  # a read-only cache still mints; the next mint makes it again
            write_text_atomic(kept, json.dumps({"dx_sbom_part": PART_FORMAT, "key": key, "components": components},
                                               indent=1, sort_keys=True) + "\n")
    return components


# --------------------------------------------------------------------------- what each mint adds
@functools.lru_cache(maxsize=1)
def _spdx_ids() -> dict[str, str]:
    """SPDX license ids by lower-case spelling, from the list cyclonedx-python-lib validates with."""
    from cyclonedx.schema._res import SPDX_JSON

    with open(SPDX_JSON, encoding="utf-8") as f:
        return {i.lower(): i for i in json.load(f).get("enum", [])}


def license_json(value: str | None) -> list[dict[str, Any]]:
    """``licenses`` as the library writes it: an SPDX id here; an expression or a name by the library."""
    if not value:
        return []
    spdx_id = _spdx_ids().get(value.lower())
    if spdx_id:
        return [{"license": {"id": spdx_id}}]
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component
    from cyclonedx.output.json import JsonV1Dot6

    doc = json.loads(JsonV1Dot6(Bom(components=[Component(name="x", licenses=_license(value))])).output_as_string())
    return doc["components"][0]["licenses"]


def sbom_timestamp() -> datetime:
    """``SOURCE_DATE_EPOCH`` when set (CI sets it to the release commit's time), else the engine's epoch.

    Never the wall clock: two mints of the same inputs must give the same bytes. No
    input carries a date we could trust offline (file times say when something was
    downloaded or unpacked), while the engine's binaries are already dated with
    dxbuild.engine.build's fixed SOURCE_DATE_EPOCH (1980-01-01): the SBOM says the same.
    """
    from dxbuild.engine.plan import SOURCE_DATE_EPOCH as ENGINE_EPOCH

    sde = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    return datetime.fromtimestamp(int(sde if sde.isdigit() else ENGINE_EPOCH), tz=timezone.utc)


def mint_document(components: list[dict[str, Any]], *, exe_name: str, exe_sha256: str, dx_version: str,
                  model: dict[str, Any] | None, timestamp: datetime,
                  draft: dict[str, Any] | None = None,
                  projector: dict[str, Any] | None = None,
                  adapter: dict[str, Any] | None = None,
                  modelfile: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole SBOM of one executable: the bundle's components plus this mint's subject and model.

    A ``--modelfile`` executable lists the Modelfile too (bom-ref ``modelfile``, type ``data``, its SHA-256):
    its SYSTEM, MESSAGEs and PARAMETERs travel in the trailer and shape every answer.

    The same document build_bom + bom_to_json make (the model sorts last, as the
    library orders components by type); the serial number is a UUID of the rest.
    """
    comps = list(components)
    models = [_model_component(model, "model", [])] if model else []
    models += [_model_component(doc, ref, [{"name": "dx:model:role", "value": role}])
               for role, doc, ref in (_further_models(draft, projector, adapter) if model else [])]
    # The library orders components by type, then name, version and bom-ref: the models come last.
    comps += sorted(models, key=lambda c: (c["name"], c["version"], c["bom-ref"]))
    if model and modelfile:
        comps.append(_modelfile_component(modelfile))
    description = _subject_description(model, draft, projector, adapter)
    if model and modelfile:
        description = description[:-1] + " + Modelfile)"
    subject = {"bom-ref": SUBJECT_REF, "description": description,
               "hashes": [{"alg": "SHA-256", "content": exe_sha256}], "licenses": license_json(DX_LICENSE),
               "name": exe_name, "type": "application", "version": dx_version}
    refs = sorted(c["bom-ref"] for c in comps)
    deps = sorted([{"ref": r} for r in refs] + [{"ref": SUBJECT_REF, "dependsOn": refs}], key=lambda d: d["ref"])
    doc: dict[str, Any] = {
        "$schema": _SCHEMA_URL, "bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1,
        "metadata": {"component": subject, "timestamp": timestamp.isoformat()},
        "components": comps, "dependencies": deps,
    }
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")
    doc["serialNumber"] = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'dx-sbom:' + hashlib.sha256(body).hexdigest())}"
    return doc


MODELFILE_REF = "modelfile"


def _modelfile_component(modelfile: dict[str, Any]) -> dict[str, Any]:
    """The Modelfile a ``--modelfile`` executable was minted from: its bytes' SHA-256 and size."""
    return {
        "bom-ref": MODELFILE_REF, "hashes": [{"alg": "SHA-256", "content": modelfile["sha256"]}],
        "name": f"Modelfile of {modelfile['name']}", "type": "data", "version": str(modelfile["sha256"])[:12],
        "description": "Ollama Modelfile: SYSTEM, MESSAGE, PARAMETER, LICENSE and TEMPLATE, in the trailer's metadata",
        "properties": [{"name": "dx:modelfile:size", "value": str(modelfile["size"])}],
    }


def _model_component(model: dict[str, Any], ref: str, extra: list[dict[str, str]]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "bom-ref": ref, "hashes": [{"alg": "SHA-256", "content": model["sha256"]}],
        "name": model["name"], "type": "machine-learning-model", "version": str(model["sha256"])[:12],
        "properties": sorted([{"name": "dx:model:size", "value": str(model.get("size"))},
                              {"name": "dx:model:source", "value": str(model.get("source"))}, *extra],
                             key=lambda p: (p["name"], p["value"])),
    }
    if lic := license_json(model.get("license")):
        entry["licenses"] = lic
    return entry


def check_document(doc: dict[str, Any]) -> None:
    """What a mint put in (the bundle's part was schema-validated when it was made)."""
    def need(ok: bool, what: str) -> None:
        if not ok:  # a bug in this module or a bad input upstream, never the user's
            raise MalformedInputError(f"generated SBOM is not valid CycloneDX 1.6: {what}")

    need(bool(_SERIAL.match(str(doc.get("serialNumber")))), "serialNumber is not a urn:uuid")
    meta = doc["metadata"]
    try:
        datetime.fromisoformat(meta["timestamp"])
    except (TypeError, ValueError):
        need(False, f"timestamp {meta.get('timestamp')!r}")
    refs = [meta["component"]["bom-ref"]] + [c.get("bom-ref") for c in doc["components"]]
    need(len(set(refs)) == len(refs), "bom-ref values are not unique")
    for c in [meta["component"], *(c for c in doc["components"] if c.get("bom-ref") in ("model", DRAFT_REF))]:
        need(isinstance(c.get("name"), str) and bool(c["name"]), f"component {c.get('bom-ref')} has no name")
        for h in c.get("hashes", []):
            need(bool(_HEX64.match(str(h.get("content")))), f"{c['bom-ref']}: SHA-256 {h.get('content')!r}")
        for p in c.get("properties", []):
            need(isinstance(p.get("name"), str) and isinstance(p.get("value"), str), f"{c['bom-ref']}: property")


def document_text(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def _engine_json(ctx: BuildContext) -> dict[str, Any]:
    engines = ctx.of(ArtifactType.ENGINE_DIR)
    if not engines:
        return {}
    path = engines[0].path / "engine.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MalformedInputError(f"{path} cannot be read: {e}") from e


def run(ctx: BuildContext) -> None:
    from dx import __version__ as dx_version

    exes = ctx.of(ArtifactType.EXECUTABLE)
    if not exes:
        raise Skip("no executables were minted")
    components = bundle_part(ctx, _engine_json(ctx))
    model, draft = _model_record(ctx.model), _model_record(ctx.draft)
    projector = _model_record(getattr(ctx, "projector", None))
    adapter = _model_record(getattr(ctx, "adapter", None))
    modelfile = modelfile_facts(ctx)
    timestamp = sbom_timestamp()
    for a in exes:
        sha = a.extra.get("sha256") or sha256_file(a.path)  # write_output hashed it while writing
        doc = mint_document(components, exe_name=a.path.name, exe_sha256=sha, dx_version=dx_version,
                            model=model, timestamp=timestamp, draft=draft,
                            projector=projector, adapter=adapter, modelfile=modelfile)
        check_document(doc)
        dest = a.path.with_name(a.path.name + SBOM_SUFFIX)
        write_text_atomic(dest, document_text(doc))
        ctx.add(ArtifactType.SBOM, dest, describes=a.path.name)


def modelfile_facts(ctx: BuildContext) -> dict[str, Any] | None:
    """A ``--modelfile`` mint's Modelfile for the SBOM, the manifest and the size report: name, sha256, size."""
    mf = getattr(ctx, "modelfile", None)
    if mf is None:
        return None
    return {"name": ctx.served_name(), "sha256": mf.sha256, "size": mf.size}


def _model_record(resolved: Any) -> dict[str, Any] | None:
    if resolved is None:
        return None
    return {"name": resolved.name, "source": resolved.source, "sha256": resolved.sha256,
            "size": resolved.size, "license": resolved.license}
