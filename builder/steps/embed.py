"""Step: append the verified GGUF to the runtime, unchanged, at a 64 KiB boundary.

Writes runtime + padding + model + metadata + trailer (the layout of
``dxverify.trailer``; the same bytes its ``write_executable`` writes) to a
temporary file inside the output directory; write_output renames it into place.

One pass over the model's bytes: each chunk is copied inside the kernel
(``copy_file_range``: it never passes through a Python buffer) and hashed
straight from the output file's pages just written — the model's SHA-256,
which must match the verified one before the trailer is written, and the
whole file's, which every later step takes from the artifact. What is hashed
is what was written. The next chunk is copied while the two hashes of the last
one run in two threads. (A read/write loop spent more system time moving a
1.1 GB model through user space than the two hashes took.)

With a ``--draft`` the draft follows the model on the next 64 KiB boundary, copied
and hashed the same way, and the trailer is format version 2 (an entry table:
DESIGN.md §9); the metadata records the draft under ``"draft"`` (name, source,
sha256, length). A ``--mmproj`` (a multimodal projector) follows the last GGUF the
same way, recorded under ``"projector"``, and an ``--adapter`` (a LoRA adapter) after
that, recorded under ``"adapter"``. One model alone is still version 1, byte for byte
as before. A ``--modelfile``'s record (``dxbuild.modelfile``) goes into the metadata under
``"modelfile"``, its digests taken from the entries as they are hashed, and the model
is named by the Modelfile's name.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import mmap
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

from dxbuild.context import ArtifactType, BuildContext, Skip


def _echo(line: str) -> None:
    click.echo(line, err=True)


name = "embed model"


def run(ctx: BuildContext) -> None:
    resolved = ctx.model
    if resolved is None:
        raise Skip("no model: the bare runtime is written as is")
    from dx import __version__ as dx_version
    from dxbuild.run_cmd import sigterm_as_exit

    bundle = ctx.one(ArtifactType.BUNDLE)
    engine = ctx.one(ArtifactType.ENGINE_DIR)
    metadata = {
        "model": ctx.served_name() or resolved.name,  # a --modelfile's name, else the model's own
        "source": resolved.source,
        "sha256": resolved.sha256,
        "tier": ctx.cell.tier,
        "os": ctx.cell.os,
        "arch": ctx.cell.arch,
        "dx_version": dx_version,
        "llama_cpp_commit": str(engine.extra.get("llama_cpp_commit") or "unknown"),
        "engine_key": str(engine.extra.get("key", "")),
        "bundle_key": str(bundle.extra.get("key", "")),
    }
    if resolved.license:
        metadata["license"] = resolved.license
    registry = getattr(resolved, "registry", None)
    if registry:  # an Ollama registry model's params (stop strings, sampling, num_ctx) and system prompt
        metadata["defaults"] = {"params": registry.get("params") or {}, "system": registry.get("system")}
    mfile = getattr(ctx, "modelfile", None)
    if mfile is not None:  # --modelfile: its record (dx.models.create's shape); write_minted fills the digests
        metadata["modelfile"] = dict(mfile.record)
        metadata["modelfile_sha256"] = mfile.sha256
    drafted, projected, adapted = ctx.draft, ctx.projector, getattr(ctx, "adapter", None)
    fd, tmp = tempfile.mkstemp(prefix=".dx-mint-", suffix=".part", dir=ctx.out_dir)
    ctx.staged = Path(tmp)  # write_output renames it; the runner removes it on failure
    # SIGTERM unwinds like Ctrl-C, so the mint's cleanup removes the partly written file.
    try:
        with sigterm_as_exit():
            em, file_sha256 = write_minted(
                bundle.path, resolved.path, fd, metadata, expected_sha256=resolved.sha256, dest=Path(tmp),
                **_part("draft", drafted), **_part("projector", projected), **_part("adapter", adapted))
        os.fchmod(fd, 0o755)
    finally:
        os.close(fd)
    ctx.staged_sha256 = file_sha256
    if resolved.sha256 is None:  # an unpinned local file: its digest is what was just embedded
        ctx.model = dataclasses.replace(resolved, sha256=em.sha256)
    _remember_verified(resolved.path, em.sha256)
    if drafted is not None and em.draft is not None:
        if drafted.sha256 is None:
            ctx.draft = dataclasses.replace(drafted, sha256=em.draft.sha256)
        _remember_verified(drafted.path, em.draft.sha256)
    if projected is not None and em.projector is not None:
        if projected.sha256 is None:
            ctx.projector = dataclasses.replace(projected, sha256=em.projector.sha256)
        _remember_verified(projected.path, em.projector.sha256)
    if adapted is not None and em.adapter is not None:
        if adapted.sha256 is None:
            ctx.adapter = dataclasses.replace(adapted, sha256=em.adapter.sha256)
        _remember_verified(adapted.path, em.adapter.sha256)
    for e in em.entries:
        _echo(f"    {e.role} at offset {e.offset} ({e.length / 1e6:.1f} MB)")
    if mfile is not None:
        rec = mfile.record
        said = [w for w, v in (("SYSTEM", rec.get("system")), ("TEMPLATE", rec.get("template"))) if v is not None]
        said += [f"{len(rec[k])} {w}" for k, w in (("messages", "MESSAGE"), ("params", "PARAMETER"),
                                                   ("license", "LICENSE")) if rec.get(k)]
        _echo(f"    Modelfile {mfile.path.name} (sha256 {mfile.sha256[:16]}…): served as"
              f" '{metadata['model']}' with {', '.join(said) or 'no defaults'} in the metadata")
    _echo(f"    trailer sealed (format version {em.version})")


def _remember_verified(model: Path, digest: str) -> None:
    """The model just hashed to its pin: the next mint's verify step can skip the hash."""
    from dxbuild.steps.verify_model import verified_cache_dir
    from dxverify import verified_cache

    verified_cache.remember(verified_cache_dir(), model, digest)


CHUNK = 64 << 20
# copy_file_range cannot serve this pair of files (another filesystem, an old kernel): copy through memory.
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}



def _part(role: str, part: Any) -> dict[str, Any]:
    """``write_minted``'s three arguments for one extra entry (draft, projector, adapter): its file, the
    digest it must have, and the record the trailer keeps (name, source, license); none when absent."""
    if part is None:
        return {}
    meta = {"model": part.name, "source": part.source}
    if part.license:
        meta["license"] = part.license
    return {role: part.path, f"{role}_expected_sha256": part.sha256, f"{role}_metadata": meta}


def write_minted(runtime: Path, model: Path, fd: int, metadata: dict[str, Any], *,
                 expected_sha256: str | None = None, dest: Path = Path(), chunk: int = CHUNK,
                 kernel_copy: bool = True, draft: Path | None = None, draft_expected_sha256: str | None = None,
                 draft_metadata: dict[str, Any] | None = None, projector: Path | None = None,
                 projector_expected_sha256: str | None = None,
                 projector_metadata: dict[str, Any] | None = None, adapter: Path | None = None,
                 adapter_expected_sha256: str | None = None,
                 adapter_metadata: dict[str, Any] | None = None) -> tuple[Any, str]:
    """Write the executable into ``fd`` (open for reading and writing, empty): (EmbeddedModel, file SHA-256).

    ``dest`` is the file's path, for the EmbeddedModel. A model (or draft) that does
    not hash to its expected SHA-256 raises IntegrityError before the trailer is
    written (the caller removes the file). ``kernel_copy=False`` copies through
    memory (what it falls back to by itself where copy_file_range cannot serve the
    two files). With ``draft`` it follows the model on the next 64 KiB boundary and
    the trailer is format version 2; a ``projector``, then an ``adapter``, follow the last one the same way.
    """
    from dxverify import trailer

    if chunk % mmap.ALLOCATIONGRANULARITY:
        raise ValueError("chunk must be a multiple of the mmap granularity")
    kernel_copy = kernel_copy and hasattr(os, "copy_file_range")  # Linux only
    whole = hashlib.sha256()
    data = Path(runtime).read_bytes()  # the bundle: tens of MB
    pos = len(data)
    _write_all(fd, data, 0)
    whole.update(data)
    metadata = {**metadata, "runtime_size": len(data), "runtime_sha256": hashlib.sha256(data).hexdigest()}
    del data
    parts = [(trailer.PRIMARY_ROLE, Path(model), expected_sha256)]
    if draft is not None:
        parts.append(("draft", Path(draft), draft_expected_sha256))
    if projector is not None:
        parts.append(("projector", Path(projector), projector_expected_sha256))
    if adapter is not None:
        parts.append(("adapter", Path(adapter), adapter_expected_sha256))
    entries = []
    for role, src_path, expected in parts:
        offset = trailer.aligned_offset(pos)
        pad = b"\0" * (offset - pos)
        _write_all(fd, pad, pos)
        whole.update(pad)
        length, digest, kernel_copy = _embed_one(src_path, fd, offset, whole, chunk, kernel_copy)
        # Refuses a model off its pin before anything is sealed.
        trailer.check_expected(role, src_path, digest, expected)
        entries.append(trailer.Entry(role, offset, length, digest))
        pos = offset + length
    if isinstance(metadata.get("modelfile"), dict):  # a --modelfile's record names the entries just hashed
        from dxbuild.modelfile import finish_record

        digest = {e.role: e.sha256 for e in entries}
        metadata["modelfile"] = finish_record(metadata["modelfile"], digest[trailer.PRIMARY_ROLE],
                                              digest.get("adapter"), digest.get("draft"))
    # Metadata [+ entry table] + trailer exactly as dxverify.trailer seals them.
    tail = trailer.seal(entries, metadata, {"draft": draft_metadata or {}, "projector": projector_metadata or {},
                                            "adapter": adapter_metadata or {}})
    _write_all(fd, tail, pos)
    whole.update(tail)
    return trailer.sealed_model(Path(dest), entries, tail), whole.hexdigest()


def _embed_one(model: Path, fd: int, offset: int, whole: Any, chunk: int,
               kernel_copy: bool) -> tuple[int, str, bool]:
    """Copy one GGUF to ``offset`` of ``fd``, hashing it and feeding ``whole``: (length, SHA-256, kernel_copy)."""
    model_hash = hashlib.sha256()
    with open(model, "rb", buffering=0) as src, ThreadPoolExecutor(2, thread_name_prefix="dx-embed-hash") as pool:
        length = os.fstat(src.fileno()).st_size
        pending: list[Future[None]] = []
        view: mmap.mmap | None = None
        pos = 0
        try:
            while pos < length:
                n = min(chunk, length - pos)
                kernel_copy = _copy_span(src.fileno(), fd, pos, offset + pos, n, kernel_copy, model)
                for f in pending:  # the previous chunk's hashes ran while this one was copied
                    f.result()
                if view is not None:
                    view.close()
                view = mmap.mmap(fd, n, offset=offset + pos, access=mmap.ACCESS_READ)
                pending = [pool.submit(whole.update, view), pool.submit(model_hash.update, view)]
                pos += n
            for f in pending:
                f.result()
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True)
            if view is not None:
                view.close()
    return length, model_hash.hexdigest(), kernel_copy


def _copy_span(src: int, dst: int, src_pos: int, dst_pos: int, n: int, kernel_copy: bool, what: Path) -> bool:
    """Copy n bytes; returns whether the kernel copy still applies to this pair of files."""
    from dxverify.errors import MalformedInputError

    done = 0
    while done < n:
        if kernel_copy:
            try:
                got = os.copy_file_range(src, dst, n - done, src_pos + done, dst_pos + done)
            except OSError as e:
                if e.errno not in _NO_KERNEL_COPY or done:
                    raise
                kernel_copy = False
                continue
        else:
            block = os.pread(src, min(n - done, 8 << 20), src_pos + done)
            got = len(block)
            if got:
                _write_all(dst, block, dst_pos + done)
        if got == 0:
            raise MalformedInputError(f"model {what} ended at byte {src_pos + done} while it was being embedded",
                                      hint="the file changed during the mint; mint again")
        done += got
    return kernel_copy


def _write_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n
