"""``dx pull hf:OWNER/REPO/FILE.gguf``: fetch through huggingface_hub into the store.

huggingface_hub does the HTTP part (HF_ENDPOINT, HF_TOKEN, retries that resume
with Range requests, its progress bar). A dx executable is built without
huggingface_hub (it would double its size); there ``dx.registry.huggingface`` speaks the
Hub's file protocol with the standard library, and a pull that was killed
resumes from the bytes it had (huggingface_hub >= 2 restarts a killed download:
each process writes its own temporary file). The file lands in the store's own
download cache on the store's filesystem, is hashed and structure-checked, and
only then renamed into ``blobs/``. The expected SHA-256 is, in this order: the
``--sha256`` given, a ``FILE.gguf.sha256`` sidecar in the repository, or the
Hub's LFS digest (the ETag of an LFS file is its SHA-256). With
``HF_HUB_OFFLINE=1`` nothing touches the network: a model already pulled is
used from the store, else one in the user's Hugging Face cache is imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dx.errors import DownloadError, InvalidModelNameError, ModelConflictError, ModelNotFoundError
from dx.models.check import verify_model
from dx.models.modelfile import Modelfile
from dx.models.ollama_dir import find_manifest, read_layer
from dx.models.store import _check_hex
from dx.names import HFFile, is_hf, looks_like_path, parse_hf, parse_name
from dx.registry import huggingface as hub_lite
from dx.registry import ollama as reg
from dxverify.errors import ConfigurationError, DXError, IntegrityError, MalformedInputError

if TYPE_CHECKING:
    from dx.models.entry import ModelEntry
    from dx.models.store import ModelStore as Store
    from dx.models.store import ProgressCallback

_SHA256 = re.compile(r"\b([0-9a-fA-F]{64})\b")
_TRUE = {"1", "true", "yes", "on"}
MAX_ADAPTERS = 8  # dx.models.adapters.MAX_ADAPTERS (which imports the store, which imports this)


def offline() -> bool:
    """HF_HUB_OFFLINE read now, not at import (huggingface_hub caches it at import time)."""
    return (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").lower() in _TRUE


def endpoint() -> str | None:
    return (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None


def pull_hf(
    store: Store,
    hf: HFFile,
    *,
    name: str | None = None,
    sha256: str | None = None,
    progress: ProgressCallback | None = None,
) -> ModelEntry:
    """Make ``hf`` a verified model in ``store`` under ``name`` (default ``hf.co/OWNER/REPO:STEM``)."""

    target = parse_name(name) if name else hf.default_name()
    expected = _check_hex(sha256) if sha256 else None
    say = progress or (lambda status, completed, total: None)
    existing = store.find_by_source(str(hf))

    if offline():
        if existing is not None:
            _check_expected(existing.sha256, expected, hf)
            say("success (offline: already in the store)", existing.size, existing.size)
            return _named(store, existing, str(target))
        return _import_from_hf_cache(store, hf, str(target), expected, say)

    remote_sha = _remote_lfs_sha256(hf)
    if existing is not None and (expected or remote_sha) == existing.sha256:
        say("success (up to date)", existing.size, existing.size)
        return _named(store, existing, str(target))

    expected = expected or _sidecar_sha256(store, hf) or remote_sha
    _remove_orphan_partials(store)
    say(f"pulling {hf}", None, None)
    link = _download(store, hf, progress)
    try:
        say("verifying sha256 digest", None, None)
        entry = store.import_file(Path(os.path.realpath(link)), str(target), sha256=expected, source=str(hf),
                                  link=True)
    except FileNotFoundError:
        # A concurrent pull of the same bytes (same ETag, same huggingface_hub blob) finished first and
        # dropped huggingface_hub's copy; it verified the same digest on the way into the store.
        if not expected or not (store.blobs / f"sha256-{expected}").is_file():
            raise DownloadError(f"the download of {hf} vanished before it was verified",
                                hint="another pull of the same file ran at the same time; run the pull again",
                                ) from None
        entry = store.name_blob(str(target), expected, str(hf))
    finally:
        _forget_download(link)
    say("success", entry.size, entry.size)
    return entry


def _named(store: Store, entry: ModelEntry, name: str) -> ModelEntry:
    return entry if entry.name == name else store.copy(entry.name, name)


def _check_expected(actual: str, expected: str | None, hf: HFFile) -> None:
    if expected and actual != expected:
        raise IntegrityError(f"{hf} in the store has SHA-256 {actual}, expected {expected}")


def _hub_or_none() -> Any:
    """huggingface_hub, or None in a dx executable built without it."""
    try:
        return _hub()
    except ImportError:
        return None


def _hub() -> Any:
    """huggingface_hub, imported only when a pull happens (it is slow to import).

    Its telemetry (user-agent details and a daily fetch of an "agent harness"
    list from the endpoint) is off unless the user turned it on explicitly.
    """
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import huggingface_hub

    if os.environ["HF_HUB_DISABLE_TELEMETRY"].lower() in _TRUE:
        from huggingface_hub import constants

        constants.HF_HUB_DISABLE_TELEMETRY = True
    return huggingface_hub


def _download(store: Store, hf: HFFile, progress: ProgressCallback | None) -> Path:
    """huggingface_hub's snapshot link to the downloaded file (its target is the blob)."""
    hub = _hub_or_none()
    store.downloads.mkdir(parents=True, exist_ok=True)
    if hub is None:
        lite = store.downloads / "lite"
        hub_lite.sweep(lite)
        return hub_lite.download(hf, hub_lite.head(hf), lite, progress)
    try:
        got = hub.hf_hub_download(
            hf.repo_id,
            hf.filename,
            revision=hf.revision,
            cache_dir=store.downloads,
            endpoint=endpoint(),
            tqdm_class=_forwarding_bar(progress) if progress else None,
        )
    except Exception as e:  # huggingface_hub and httpx raise many types; each becomes one line
        raise _as_dx_error(e, hf) from None
    return Path(got)


def _remote_lfs_sha256(hf: HFFile) -> str | None:
    """The Hub's ETag for an LFS file is its SHA-256; None for non-LFS files or no answer."""
    hub = _hub_or_none()
    if hub is None:
        etag = hub_lite.head(hf).etag or ""
        return etag if _SHA256.fullmatch(etag) else None
    url = hub.hf_hub_url(hf.repo_id, hf.filename, revision=hf.revision, endpoint=endpoint())
    try:
        meta = hub.get_hf_file_metadata(url)
    except Exception as e:
        raise _as_dx_error(e, hf) from None
    etag = (meta.etag or "").strip('"').lower()
    return etag if len(etag) == 64 and _SHA256.fullmatch(etag) else None


def _sidecar_sha256(store: Store, hf: HFFile) -> str | None:
    """A ``FILE.gguf.sha256`` next to the model in the repository, if the publisher put one there."""
    hub = _hub_or_none()
    if hub is None:
        raw = hub_lite.fetch_small(HFFile(hf.repo_id, hf.filename + ".sha256", hf.revision))
        if raw is None:
            return None
        return _sidecar_digest(raw.decode(errors="replace"), hf)
    try:
        got = hub.hf_hub_download(
            hf.repo_id,
            hf.filename + ".sha256",
            revision=hf.revision,
            cache_dir=store.downloads,
            endpoint=endpoint(),
        )
    except Exception as e:
        if _status(e) == 404 or isinstance(e, hub.errors.EntryNotFoundError):
            return None
        raise _as_dx_error(e, hf) from None
    try:
        text = Path(got).read_text(errors="replace")[:4096]
    finally:
        with contextlib.suppress(OSError):
            os.unlink(os.path.realpath(got))
    return _sidecar_digest(text, hf)


def _sidecar_digest(text: str, hf: HFFile) -> str:
    m = _SHA256.search(text[:4096])
    if not m:
        raise ConfigurationError(f"{hf}.sha256 holds no SHA-256", hint="pass --sha256 HEX instead")
    return m.group(1).lower()


def _import_from_hf_cache(
    store: Store, hf: HFFile, name: str, expected: str | None, say: ProgressCallback
) -> ModelEntry:
    hub = _hub_or_none()
    try:
        if hub is None:
            got = hub_lite.cached_snapshot(_user_hf_cache(), hf)
            if got is None:
                raise FileNotFoundError(str(hf))
        else:
            got = hub.hf_hub_download(
                hf.repo_id, hf.filename, revision=hf.revision, local_files_only=True, cache_dir=_user_hf_cache()
            )
    except Exception:
        raise ModelNotFoundError(
            f"{hf} is not in the store or the Hugging Face cache, and HF_HUB_OFFLINE is set",
            hint="pull it once with the network on (unset HF_HUB_OFFLINE)",
        ) from None
    say(f"importing {hf} from the Hugging Face cache", None, None)
    entry = store.import_file(Path(got), name, sha256=expected, source=str(hf))
    say("success", entry.size, entry.size)
    return entry


def _user_hf_cache() -> Path:
    """The user's Hugging Face cache as the environment says now (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _remove_orphan_partials(store: Store) -> None:
    """Partial files of pulls that were killed: huggingface_hub only removes its own on a clean failure.

    A download holds ``.locks/<repo>/<etag>.lock`` (flock) while it writes
    ``<etag>.<id>.incomplete``; a partial whose lock nobody holds is an orphan.
    """
    import fcntl

    for part in store.downloads.glob("models--*/blobs/*.incomplete"):
        lock = store.downloads / ".locks" / part.parent.parent.name / (part.name.split(".", 1)[0] + ".lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o664)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # a live download
            continue
        try:
            part.unlink(missing_ok=True)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _forget_download(link: Path) -> None:
    """The bytes now live in blobs/ (or were refused): drop huggingface_hub's link and blob for this file.

    Only this file's entries go: another pull from the same repository may be
    writing into the same cache folder right now.
    """
    blob = Path(os.path.realpath(link))
    for p in (link, blob):
        with contextlib.suppress(OSError):
            p.unlink()


def _status(e: BaseException) -> int | None:
    resp = getattr(e, "response", None)
    return getattr(resp, "status_code", None)


def _as_dx_error(e: BaseException, hf: HFFile) -> DXError:
    hub = _hub()

    errors = hub.errors
    # "cannot find the requested files in the local cache" hides the real (network) cause.
    while isinstance(e, errors.LocalEntryNotFoundError) and e.__cause__ is not None:
        e = e.__cause__
    where = endpoint() or "https://huggingface.co"
    if isinstance(e, DXError):
        return e
    if isinstance(e, errors.RepositoryNotFoundError):
        return ModelNotFoundError(f"repository {hf.repo_id} not found at {where}", hint="check OWNER/REPO")
    if isinstance(e, errors.RevisionNotFoundError):
        return ModelNotFoundError(f"revision {hf.revision!r} of {hf.repo_id} not found at {where}")
    if isinstance(e, errors.EntryNotFoundError) or _status(e) == 404:
        return ModelNotFoundError(f"{hf.filename} not found in {hf.repo_id} at {where}", hint="check the file name")
    if _status(e) in (401, 403):
        return DownloadError(
            f"{where} refused {hf} (HTTP {_status(e)})", hint="a gated or private repo needs HF_TOKEN"
        )
    if isinstance(e, errors.OfflineModeIsEnabled):
        return DownloadError(f"cannot fetch {hf}: offline mode is on", hint="unset HF_HUB_OFFLINE")
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return DownloadError(
        f"downloading {hf} from {where} failed: {first_line}",
        hint="check the network or HF_ENDPOINT and run the pull again; nothing was stored",
    )


def _forwarding_bar(progress: ProgressCallback) -> type:
    """A tqdm stand-in that forwards byte counts to ``progress`` (for /api/pull streams)."""

    class _Forward:
        def __init__(self, *args: Any, total: int | None = None, initial: int = 0, desc: str = "", **_: Any):
            self.total = total
            self.n = initial
            self.desc = desc
            self._last = 0.0

        def __enter__(self) -> _Forward:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

        def update(self, k: int = 1) -> None:
            self.n += k
            now = time.monotonic()
            if now - self._last >= 0.1 or (self.total is not None and self.n >= self.total):
                self._last = now
                progress("downloading", self.n, self.total)

        def close(self) -> None:
            progress("downloading", self.n, self.total)

        def set_description(self, desc: str) -> None:
            self.desc = desc

    return _Forward


# ---- Ollama's registry: `dx pull llama3.2[:tag]` ---------------------------------------------


def pull_registry(
    store: Store,
    spec: str,
    *,
    name: str | None = None,
    progress: ProgressCallback | None = None,
    insecure: bool = False,
) -> ModelEntry:
    """``spec`` from Ollama's registry (or Ollama's own store, read-only, when it is there) into ``store``.

    Stored as Ollama names it (``llama3.2:3b``; another host or namespace keeps
    it), source ``registry:<host>/<ns>/<model>:<tag>``; the manifest's digest,
    its layers and what the small layers say (params, system, template,
    licenses, messages) go into DX's manifest under ``registry``. ``insecure``: plain HTTP to the name's host.

    A manifest with ``adapter`` (LoRA), ``draft`` or ``messages`` layers is a shaped model
    (what ``dx create`` or Ollama's create pushed): its adapter and draft blobs come too, each
    verified by digest and checked against the model (``dxverify.adapter`` / ``dxverify.spec_pair``)
    before it enters the store, and the model also gets a ``modelfile`` record as a created model
    has (``dx.models.create``): served with ``--lora``, its MESSAGEs before every chat, its
    Modelfile in ``dx show --modelfile`` / ``/api/show``. Nothing is named until every part is in.
    """

    rname = reg.parse_registry_name(spec).plain_http(insecure)
    target = str(parse_name(name) if name else parse_name(rname.short))
    say = progress or _stderr_progress(rname)
    source = f"registry:{rname}"
    existing = next((e for e in store._own_entries() if e.name == target and e.source == source), None)

    local = find_manifest(store.ollama_dir, rname) if store.ollama_dir else None
    if local is not None:
        manifest, models_dir = local
        if _same_manifest(store, existing, manifest):
            say("success (up to date)", existing.size, existing.size)  # type: ignore[union-attr]
            return existing  # type: ignore[return-value]
        say("using Ollama's copy in its own store (read-only, nothing downloaded)", None, None)
        info = reg.read_info(rname, manifest, lambda ly: read_layer(models_dir, rname, ly))
        layer = manifest.model_layer(rname.short)
        blob = models_dir / "blobs" / f"sha256-{layer.sha256}"
        record = _shaped_record(store, rname, manifest, info, blob,
                                fetch=lambda ly: models_dir / "blobs" / f"sha256-{ly.sha256}",
                                read=lambda ly: read_layer(models_dir, rname, ly))
        # A hard link shares Ollama's inode without writing to it; the store sets mode 0644 on what it
        # adopts, so a blob with another mode is copied instead.
        link = (blob.stat().st_mode & 0o777) == 0o644
        say(f"verifying sha256 digest of the model layer ({'hard link' if link else 'copy'})", None, None)
        try:
            entry = store.import_file(blob, target, sha256=layer.sha256, source=source, link=link,
                                      registry=_registry_doc(rname, manifest, info, "ollama-store"),
                                      modelfile=record)
        except IntegrityError as e:
            raise IntegrityError(f"{rname.short} in Ollama's store: {e.message}",
                                 hint="`ollama pull` it again; DX never changes Ollama's files") from None
        _notes(rname, manifest, info, entry, say)
        say("success", entry.size, entry.size)
        return entry

    manifest = reg.fetch_manifest(rname)
    if _same_manifest(store, existing, manifest):
        say("success (up to date)", existing.size, existing.size)  # type: ignore[union-attr]
        return existing  # type: ignore[return-value]
    say(f"pulling manifest sha256:{manifest.sha256[:12]} of {rname.short}", None, None)
    layer = manifest.model_layer(rname.short)
    info = reg.read_info(rname, manifest, lambda ly: reg.fetch_small(rname, ly))
    doc = _registry_doc(rname, manifest, info, "registry")
    dest = store.downloads / "registry"
    in_store = store.blobs / f"sha256-{layer.sha256}"
    path: Path | None = None
    try:
        if not in_store.is_file():  # else: verified when it entered the store
            reg.sweep(dest)
            say(f"pulling {layer.sha256[:12]} (model, {layer.size} bytes)", 0, layer.size)
            path = reg.download_blob(rname, layer, dest, progress=say)

        def fetch(ly: reg.Layer) -> Path:
            say(f"pulling {ly.sha256[:12]} ({ly.kind}, {ly.size} bytes)", 0, ly.size)
            return reg.download_blob(rname, ly, dest, progress=say)

        record = _shaped_record(store, rname, manifest, info, path or in_store, fetch=fetch,
                                read=lambda ly: reg.fetch_small(rname, ly), downloaded=True)
        if path is None:
            entry = store.name_blob(target, layer.sha256, source, registry=doc, modelfile=record)
        else:
            entry = store.import_file(path, target, sha256=layer.sha256, source=source, link=True, registry=doc,
                                      modelfile=record)
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
    _notes(rname, manifest, info, entry, say)
    from dx.models.push import remember_pull

    remember_pull(store, rname, manifest)  # a push to this registry can mount these blobs
    say("success", entry.size, entry.size)
    return entry


def _shaped_record(
    store: Store, rname: reg.RegistryName, manifest: reg.Manifest, info: reg.ModelInfo, model: Path,
    *, fetch: Callable[[reg.Layer], Path], read: Callable[[reg.Layer], bytes],
    downloaded: bool = False,
) -> dict[str, Any] | None:
    """The ``modelfile`` record of a shaped model (adapter, draft or messages layers), None for another.

    Each adapter and draft blob is taken into the store first: ``fetch`` gives a file of the
    layer (downloaded and digest-checked, or Ollama's blob; ``downloaded``: ours to delete), which
    is checked against the model ``model`` and then received by the store (hashed again on the way in).
    """
    adapters, drafts = manifest.of_kind("adapter"), manifest.of_kind("draft")
    if not adapters and not drafts and not info.messages:
        return None
    if len(adapters) > MAX_ADAPTERS or len(drafts) > 1:
        raise MalformedInputError(f"{rname.short}: {len(adapters)} adapter and {len(drafts)} draft layers; DX "
                                  f"serves at most {MAX_ADAPTERS} adapters and one draft")
    model_sha = manifest.model_layer(rname.short).sha256
    for ly in [*adapters, *drafts]:
        _take_blob(store, rname, ly, model, model_sha, fetch, downloaded)
    requires = None
    if manifest.config is not None:
        with contextlib.suppress(DXError, ValueError, AttributeError):
            requires = json.loads(read(manifest.config)).get("requires") or None
    record: dict[str, Any] = {
        "from": rname.short, "base": f"sha256:{manifest.model_layer(rname.short).sha256}",
        "system": info.system, "template": info.template, "license": list(info.licenses),
        "messages": [dict(m) for m in info.messages], "params": dict(info.params),
        "adapters": [ly.digest for ly in adapters], "draft": drafts[0].digest if drafts else None,
        "requires": requires if isinstance(requires, str) else None,
    }
    record["text"] = Modelfile(
        from_=record["from"], template=record["template"], system=record["system"], parameters=record["params"],
        adapters=list(record["adapters"]), draft=record["draft"], license=record["license"],
        messages=record["messages"], requires=record["requires"]).render()  # as dx.models.create.render_record
    return record


def _take_blob(store: Store, rname: reg.RegistryName, ly: reg.Layer, model: Path, model_sha: str,
               fetch: Callable[[reg.Layer], Path], downloaded: bool) -> None:
    """An adapter or draft layer into the store's blobs, only once it is known to fit ``model``."""
    have = store.blobs / f"sha256-{ly.sha256}"
    if ly.sha256 == model_sha:  # a model that is its own draft: the model layer's bytes, stored as the model
        _check_fits(rname, ly, model, model)
        return
    path = have if have.is_file() else fetch(ly)
    try:
        _check_fits(rname, ly, path, model)
        if path != have:
            with open(path, "rb") as f:
                store.receive_blob(iter(lambda: f.read(1 << 20), b""), ly.sha256, ly.size)
    finally:
        if downloaded and path != have:
            path.unlink(missing_ok=True)


def _check_fits(rname: reg.RegistryName, ly: reg.Layer, path: Path, model: Path) -> None:
    """``dxverify.adapter`` (a LoRA for this model) or ``dxverify.spec_pair`` (a draft that can speculate for it);
    the registry's bytes, so a refusal is its failure (MalformedInputError: 502 on the API), in words without paths."""
    label = f"{rname.short}: the {ly.kind} layer sha256:{ly.sha256[:12]}"
    try:
        if ly.kind == "adapter":
            from dxverify.adapter import check_adapter

            check_adapter(path, label=label, model=model)
        else:
            from dxverify.spec_pair import check_pair

            check_pair(model, path)
    except DXError as e:
        words = e.message.replace(str(path), label).replace(str(model), "the model layer")
        if not words.startswith(label):
            words = f"{label}: {words}"
        raise MalformedInputError(words[:400], hint="the model was pushed with a part made for another model; "
                                  "nothing was stored") from None


def pull_missing(store: Store, spec: str, missing: DXError, progress: ProgressCallback | None) -> ModelEntry:
    """``dx run NAME`` / ``dx serve NAME`` for a name not in the store: pull it from Ollama's registry first.

    When the registry cannot help either, the error says both things (the name is not here, and why
    the registry did not give it).
    """

    try:
        reg.parse_registry_name(spec)
    except ConfigurationError:
        raise missing from None
    try:
        return pull_registry(store, spec, progress=progress)
    except (DownloadError, ModelNotFoundError) as e:
        raise ModelNotFoundError(f"{getattr(missing, 'message', missing)}, and Ollama's registry did not have it: {e}",
                                 hint=f"check the name; `dx pull {spec}` pulls it explicitly") from None


def _same_manifest(store: Store, existing: ModelEntry | None, manifest: Any) -> bool:
    return (existing is not None and (existing.registry or {}).get("manifest_digest") == f"sha256:{manifest.sha256}"
            and existing.path.is_file())


def _registry_doc(rname: Any, manifest: Any, info: Any, via: str) -> dict[str, Any]:
    return {
        "name": str(rname),
        "manifest_digest": f"sha256:{manifest.sha256}",
        "layers": [ly.to_json() for ly in manifest.layers],
        "via": via,
        **info.to_json(),
    }


def _notes(rname: Any, manifest: Any, info: Any, entry: ModelEntry, say: ProgressCallback) -> None:
    """What DX does differently from Ollama with this model, said once at pull time."""
    if info.template and not entry.facts.has_chat_template:
        say(f"note: {rname.short} has only a Go chat template (Ollama's); DX uses the GGUF's Jinja template and "
            "this GGUF has none, so the engine falls back to its default template", None, None)
    for kind in ("projector",):
        if manifest.of_kind(kind):
            say(f"note: {rname.short} has a {kind} layer; DX does not use it yet (the model layer runs alone)",
                None, None)


def _stderr_progress(rname: Any) -> ProgressCallback:
    """`dx run NAME` pulling on first use: one line to start, one to finish, nothing per byte."""
    import sys

    def say(status: str, completed: int | None, total: int | None) -> None:
        if status.startswith(("pulling manifest", "using Ollama", "success", "note:")):
            print(f"dx: {status}", file=sys.stderr, flush=True)

    return say


def pull_by_name(store: Store, spec: str, progress: ProgressCallback | None = None, *,
                 insecure: bool = False) -> ModelEntry:
    """``/api/pull``: ``hf:…``, or a name (Ollama's registry unless DX already has it); never a file path.

    A model DX already has is a success without the network, as Ollama answers for
    a present model: one it made or imported at once, one that came from a
    registry after asking the registry for a newer manifest, falling back to the
    copy here when the registry cannot be reached. Failures keep their HTTP
    meaning (``dx.errors``): a bad name 400, a model the registry does not have
    404, a registry that cannot be reached or sends bad bytes 502. ``insecure``: plain HTTP to the registry.
    """

    say = progress or (lambda status, completed, total: None)
    if is_hf(spec):
        try:
            hf = parse_hf(spec)
        except ConfigurationError as e:
            raise InvalidModelNameError(e.message, hint=e.hint) from None
        try:
            return _upstream(lambda: store.pull(spec, progress=say))
        except DownloadError:
            here = store.find_by_source(str(hf))
            if here is None or not here.path.is_file():
                raise
            say("the Hub cannot be reached; using the copy DX already has", None, None)
            say_present(here.sha256, here.size, say)
            return here
    if looks_like_path(spec):
        raise InvalidModelNameError(f"{spec[:80]!r} is not a model name: the API pulls model names, not files")
    parse_name(spec)  # InvalidModelNameError: 400
    try:
        entry: ModelEntry | None = store.get(spec)
    except (ModelNotFoundError, MalformedInputError):  # a broken manifest: the registry's copy replaces it
        entry = None
    if entry is not None and not entry.read_only and not entry.source.startswith("registry:"):
        _still_there(store, entry)
        say_present(entry.sha256, entry.size, say)
        return entry  # already here: Ollama answers success for a present model
    try:
        reg.parse_registry_name(spec)
    except ConfigurationError as e:
        raise InvalidModelNameError(e.message, hint=e.hint) from None
    try:
        return _upstream(lambda: pull_registry(store, spec, progress=say, insecure=insecure))
    except DownloadError:
        if entry is None or not entry.path.is_file():
            raise
        say("the registry cannot be reached; using the copy DX already has", None, None)
        say_present(entry.sha256, entry.size, say)
        return entry


def _still_there(store: Store, entry: ModelEntry) -> None:
    """A model made or imported here (no registry to pull it from again) is still its bytes: checked, as
    the "verifying sha256 digest" line says (hashed once, then cached), and refused naming the model."""
    if not entry.path.is_file():
        raise ModelNotFoundError(f"model {entry.name!r} is listed but its bytes are no longer there",
                                 hint=f"delete {entry.name} and import or copy it again")
    try:
        verify_model(entry.path, offset=entry.offset, length=entry.length, expected_sha256=entry.sha256,
                     cache_dir=store.root / "cache")
    except DXError:
        raise ModelConflictError(f"model {entry.name!r} no longer matches its SHA-256 and did not come from a "
                                 "registry, so it cannot be pulled again",
                                 hint=f"delete {entry.name} and import or copy it again") from None


def say_present(sha256: str, size: int, say: ProgressCallback) -> None:
    """The progress lines of a pull that finds the model already here (Ollama's, without a download)."""
    say("pulling manifest", None, None)
    say(f"pulling {sha256[:12]}", size, size)
    say("verifying sha256 digest", None, None)
    say("writing manifest", None, None)
    say("success", size, size)


def _upstream(pull: Any) -> ModelEntry:
    """Run a pull; bytes the registry got wrong (a digest that does not match, a manifest that is not one) are
    the registry's failure (502), not the server's (500)."""
    try:
        return pull()
    except (IntegrityError, MalformedInputError) as e:
        raise DownloadError(e.message, hint=e.hint) from None
