"""The model a minted executable carries inside itself.

A minted ``dx-<model>-<tier>-<os>-<arch>`` is the Nuitka onefile runtime with a
GGUF appended at a 64 KiB boundary and a trailer at the very end
(``dxverify.trailer``). Inside the compiled program ``sys.argv[0]`` is the
absolute path of that onefile binary (also when started through PATH or a
symlink), so the runtime reads the trailer from the end of its own file and
hands the engine ``FILE#offset=N``: the model is mmapped in place, never
extracted or copied.

Before anything is served the model is checked: its GGUF structure at every
start (milliseconds) and its SHA-256 against the trailer on the first start,
then remembered by (path, size, mtime, inode) in ``dxverify.verified_cache``.
A byte changed anywhere in the model makes the executable refuse to serve.

A two-model executable (trailer version 2, ``dxbuild --model M --draft D``) also
carries a draft for speculative decoding: ``embedded_draft()`` hands it out as a
ModelSource of its own (``FILE#offset=N`` like the model), verified the same way;
verifying the model verifies the draft too, so a damaged draft stops the start.

An executable minted with ``dxbuild --mmproj P`` carries a vision projector as a
"projector" entry. The engine's projector loader (tools/mtmd/clip.cpp) opens a
whole file by name — the engine's ``FILE#offset=N`` patch covers the model
loader only — so ``embedded_part(em, "projector")`` extracts the entry once to
``$DX_HOME/cache/projectors/sha256-<digest>.gguf``: hashed while it is copied,
refused unless it matches the trailer, written atomically, and reused while the
file still hashes to that digest (remembered per file state in
``dxverify.verified_cache``). Verifying the model verifies the projector too.

An executable minted with ``dxbuild --adapter A`` (or a Modelfile's ``ADAPTER``)
carries a LoRA adapter as an "adapter" entry. llama.cpp's adapter loader
(src/llama-adapter.cpp ``llama_adapter_lora_init``) opens the file by name and
reads tensors at offsets from the file's start, so it cannot read at an offset
either: ``embedded_part(em, "adapter")`` extracts it the same way, to
``$DX_HOME/cache/adapters/sha256-<digest>.gguf``, and verifying the model verifies
(extracts) the adapter too.

An executable minted with ``dxbuild --modelfile FILE`` carries the Modelfile's record
(``dx.models.create``'s shape) in its metadata under ``"modelfile"`` and serves its model
under the Modelfile's name: ``embedded_modelfile()`` hands the record to ``dx show
--modelfile``, ``/api/show`` and ``dx.models.defaults`` (its SYSTEM, MESSAGEs, PARAMETERs).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dx import config
from dx.models.catalog import Store
from dx.models.source import ModelSource, verify_source
from dx.names import default_aliases
from dxverify.errors import ConfigurationError, DXError, IntegrityError, MalformedInputError

if TYPE_CHECKING:
    from dx.models.source import ModelSource
    from dxverify.trailer import EmbeddedModel, Entry

# Lets a developer or test point an uncompiled `python -m dx` at a minted file.
SELF_ENV = config.SELF_EXECUTABLE_ENV


def running_compiled_onefile() -> bool:
    """True inside a Nuitka onefile binary (``__compiled__.onefile``)."""
    compiled = globals().get("__compiled__")
    return bool(compiled is not None and getattr(compiled, "onefile", False))


def self_executable() -> Path | None:
    """The file this program was started from, when that file can carry a model.

    Compiled: ``sys.argv[0]`` (Nuitka sets it to the onefile binary's absolute
    path). Uncompiled (``python -m dx``, the ``dx`` console script): only a
    binary argv[0] can carry a model, never a ``.py`` file.
    """
    override = config.self_executable_override()
    if override:
        return Path(override).resolve()
    if not (sys.argv and sys.argv[0]):
        return None
    exe = Path(sys.argv[0])
    if running_compiled_onefile():
        return exe.resolve()
    if exe.suffix == ".py" or not exe.is_file():
        return None
    return exe.resolve()


def find_embedded(path: Path | None = None) -> EmbeddedModel | None:
    """The trailer's view of the embedded model, or None for a bare runtime.

    Raises MalformedInputError / IntegrityError when a trailer is present but
    damaged (truncated file, forged offsets, metadata that disagrees).
    """
    path = path or self_executable()
    if path is None:
        return None
    from dxverify.trailer import find_trailer

    return find_trailer(path)


def model_source(em: EmbeddedModel) -> ModelSource:
    """The supervisor's handle on the embedded model (path + offset + length + hash)."""

    return ModelSource(path=em.path, offset=em.offset, length=em.length,
                       name=model_name(em), sha256=em.sha256)


def model_name(em: EmbeddedModel) -> str:
    """The name clients use for the embedded model (``smollm2``)."""
    return str(em.metadata.get("model") or "embedded")


def verify_embedded(em: EmbeddedModel) -> None:
    """Refuse a damaged embedded model (and draft): structure every time, SHA-256 once (cached)."""
    verify_embedded_source(model_source(em))


def draft_source(em: EmbeddedModel) -> ModelSource | None:
    """The supervisor's handle on the embedded draft model, or None when the file carries none."""
    entry = getattr(em, "draft", None)
    if entry is None:
        return None

    record = em.metadata.get("draft") or {}
    name = str(record.get("model") or "draft") if isinstance(record, dict) else "draft"
    return ModelSource(path=em.path, offset=entry.offset, length=entry.length, name=name, sha256=entry.sha256)


def embedded_draft(path: Path | None = None) -> ModelSource | None:
    """The verified embedded draft as a ModelSource (for ``--spec-draft-model``), or None when there is none.

    Verifying it checks the target too (a draft is only ever used with it), and
    raises IntegrityError / MalformedInputError naming the damaged entry.
    """
    em = find_embedded(path)
    if em is None or getattr(em, "draft", None) is None:
        return None
    verify_embedded(em)
    return draft_source(em)


def verify_embedded_source(source: ModelSource, role: str = "model") -> None:
    """verify_source for an embedded model (or draft), naming the executable and the entry on a mismatch.

    Verifying the model of a two-model executable verifies its draft too: the
    file is one artifact, and a damaged draft refuses the start (``dx serve``
    calls this for the embedded model whether or not it speculates).

    The verifier's own errors name the field and byte offset; a hash mismatch is
    re-raised naming the executable, so the user knows which file to replace.
    """

    try:
        verify_source(source)
    except IntegrityError as e:
        raise IntegrityError(
            f"{source.path}: the embedded {role} '{source.display_name}' does not match its recorded"
            f" SHA-256 {source.sha256} ({e.message})",
            hint="the executable was altered or damaged; refusing to serve — download it again",
        ) from None
    except MalformedInputError as e:
        raise MalformedInputError(
            f"{source.path}: the embedded {role} '{source.display_name}' (at offset {source.offset})"
            f" is damaged: {e.message}",
            hint="the executable was altered or damaged; refusing to serve — download it again",
        ) from None
    if role == "model":
        draft = _draft_beside(source)
        if draft is not None:
            verify_embedded_source(draft, role="draft")
        em = _trailer_of(source)
        if em is not None:
            for role in EXTRACTED_PARTS:
                embedded_part(em, role)


def _draft_beside(source: ModelSource) -> ModelSource | None:
    """The draft that travels with ``source`` when it is the primary model of a two-model executable."""
    em = _trailer_of(source)
    return draft_source(em) if em is not None else None


def _trailer_of(source: ModelSource) -> EmbeddedModel | None:
    """The trailer of the executable whose primary model ``source`` is, or None."""
    if not source.offset:
        return None
    from dxverify.trailer import find_trailer

    em = find_trailer(source.path)
    if em is None or em.offset != source.offset:
        return None
    return em


#: The entries extracted to a file of their own (the engine's loaders for them open whole files by name), and
#: the folder under ``$DX_HOME/cache`` each role's files live in (one file per digest, shared by executables).
EXTRACTED_PARTS = {"projector": "projectors", "adapter": "adapters"}


def part_cache_dir(role: str) -> Path:
    """Where extracted entries of ``role`` ("projector", "adapter") live."""
    return config.dx_home() / "cache" / EXTRACTED_PARTS[role]


def part_for_embedded(source: ModelSource, role: str) -> Path | None:
    """The ``--mmproj`` / ``--lora`` file (``role`` "projector" / "adapter") for the primary model of an
    executable with such an entry, else None."""
    em = _trailer_of(source)
    return embedded_part(em, role) if em is not None else None


def embedded_part(em: EmbeddedModel, role: str) -> Path | None:
    """The executable's ``role`` entry ("projector", "adapter") as a verified file of its own (extracted once),
    or None without one.

    Raises IntegrityError naming the executable when the entry's bytes do not hash
    to the trailer's digest (nothing is left behind then).
    """
    entry = next((e for e in em.entries if e.role == role), None)
    if entry is None:
        return None
    return _extracted(em, entry, part_cache_dir(role))


def embedded_modelfile(em: EmbeddedModel) -> dict[str, Any] | None:
    """The Modelfile record of an executable minted with ``dxbuild --modelfile`` (``dx.models.create``'s shape:
    system, messages, params, license, template, text…), else None. The trailer's CRC covers it."""
    record = em.metadata.get("modelfile")
    return record if isinstance(record, dict) else None


def modelfile_for_embedded(source: ModelSource) -> dict[str, Any] | None:
    """The Modelfile record of the executable whose primary model ``source`` is, else None."""
    em = _trailer_of(source)
    return embedded_modelfile(em) if em is not None else None


def _extracted(em: EmbeddedModel, entry: Entry, folder: Path) -> Path:
    """``entry`` as ``folder/sha256-<digest>.gguf``: reused while it hashes to the digest, else extracted."""
    from dxverify import verified_cache
    from dxverify.hashing import sha256_file

    cache = config.dx_home() / "cache"
    dest = folder / f"sha256-{entry.sha256}.gguf"
    try:
        if dest.is_file() and dest.stat().st_size == entry.length:
            if verified_cache.lookup(cache, dest) == entry.sha256:
                return dest
            if sha256_file(dest) == entry.sha256:
                verified_cache.remember(cache, dest, entry.sha256)
                return dest
        _extract(entry, dest)
    except OSError as e:
        raise MalformedInputError(f"{em.path}: cannot extract the embedded {entry.role} to {dest}: {e.strerror or e}",
                                  hint="check that $DX_HOME is writable") from e
    verified_cache.remember(cache, dest, entry.sha256)
    return dest


def _extract(entry: Entry, dest: Path) -> None:
    """Copy ``entry``'s bytes to ``dest`` atomically, hashing them; IntegrityError (and no file) on a mismatch."""
    import hashlib
    import tempfile

    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{entry.role}-", suffix=".part", dir=dest.parent)
    try:
        with open(entry.path, "rb") as src, os.fdopen(fd, "wb") as out:
            src.seek(entry.offset)
            left = entry.length
            while left:
                block = src.read(min(left, 8 << 20))
                if not block:
                    raise MalformedInputError(f"{entry.path}: the {entry.role} entry ends early (byte"
                                              f" {entry.offset + entry.length - left})")
                h.update(block)
                out.write(block)
                left -= len(block)
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != entry.sha256:
            raise IntegrityError(
                f"{entry.path}: the embedded {entry.role} ({entry.length} bytes at offset {entry.offset}) has"
                f" SHA-256 {got}, the trailer says {entry.sha256}",
                hint="the executable was altered or damaged; refusing to use it — download it again",
            )
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def embedded_source(path: Path | None = None) -> ModelSource | None:
    """The verified embedded model as a ModelSource, or None when there is none."""
    em = find_embedded(path)
    if em is None:
        return None
    verify_embedded(em)
    return model_source(em)


def names_embedded(em: EmbeddedModel, name: str) -> bool:
    """Does ``name`` mean the embedded model? The same names ``dx serve`` answers to for it."""

    return name in default_aliases(model_name(em))


def embedded_source_for(name: str) -> ModelSource | None:
    """The verified embedded model when this executable carries one called ``name``."""
    em = find_embedded()
    if em is None or not names_embedded(em, name):
        return None
    verify_embedded(em)
    return model_source(em)


def self_path_with_model() -> Path | None:
    """This executable when it carries a model (or a trailer too damaged to read: verify says why)."""

    exe = self_executable()
    if exe is None:
        return None
    try:
        return exe if find_embedded(exe) is not None else None
    except DXError:
        return exe


def resolve(spec: str | None, *, pull: bool = True, verify: bool = True) -> ModelSource:
    """What a CLI command's MODEL means: the embedded model when it is left out or named, else the store's.

    ``dx run``/``show``/``doctor`` all come here, so ``smollm2``, ``smollm2:latest`` and no
    MODEL at all name the model inside the executable, as they do for ``dx serve``
    (``dx.names.default_aliases``). Without ``verify`` the embedded model is only
    located (``show`` and ``doctor`` read its header, which checks its structure).
    """

    em = find_embedded()
    if em is not None and (not spec or names_embedded(em, spec)):
        if verify:
            verify_embedded(em)
        return model_source(em)
    if not spec:
        raise ConfigurationError("no MODEL given, and this dx carries no model of its own",
                                 hint="name one: a store name (`dx list`), a GGUF path or hf:OWNER/REPO/FILE.gguf")

    return Store().resolve(spec, pull=pull, verify=verify)


def run_arguments(model: str, prompt: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """``./dx-smollm2-cpu-linux-x86_64 run "Why is the sky blue?"`` answers with the embedded model.

    With a model inside, the first argument of ``dx run`` is a prompt unless it
    names a model: the embedded one, a GGUF path, ``hf:…``, or a store entry.
    """
    em = find_embedded()
    if em is None:
        return model, prompt
    name = model_name(em)
    if names_embedded(em, model) or _names_a_model(model):
        return model, prompt
    return name, (model, *prompt)


def _names_a_model(text: str) -> bool:
    if text.startswith("hf:") or text.endswith(".gguf") or (os.sep in text and Path(text).is_file()):
        return True
    if any(c.isspace() for c in text):
        return False

    try:
        Store().get(text)
        return True
    except (DXError, ValueError, OSError):
        return False
