"""`dx verify` and `dx inspect`: check a model (or a minted executable) before trusting it.

The check is a small pipeline over one ``VerifyResult``: detect what the file
is, run that kind's structure check, then the hash. New kinds (a minted
executable) and new checks (signatures) are one function each, so the command
grows without growing branches. Exit codes: 0 valid, 3 malformed
(MalformedInputError), 4 hash mismatch (IntegrityError), 2 bad flags.

A two-model executable (trailer version 2: the target and a draft) is checked
entry by entry: every GGUF's structure and SHA-256 against its own table entry,
the pair's vocabularies as llama.cpp's speculation would (``dxverify.spec_pair``),
and a failure names the entry ("draft entry …") so the user knows which part broke.
A "projector" entry (``dxbuild --mmproj``) is checked the same way, and must be a
vision projector that fits the model (``dxverify.projector``); an "adapter" entry
(``dxbuild --adapter``) a LoRA adapter that fits the model (``dxverify.adapter``).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from dxverify.errors import DXError, IncompatibleModelsError, IntegrityError, MalformedInputError


@dataclass
class VerifyResult:
    """Everything `dx verify` learned about one file; ``--json`` prints it as is."""

    path: str
    kind: str = "unknown"
    errors: list[dict[str, Any]] = field(default_factory=list)
    sha256: str | None = None
    expected_sha256: str | None = None
    expected_from: str | None = None
    summary: dict[str, Any] | None = None
    # Where the GGUF lies inside the file (a minted executable carries it at an offset).
    offset: int = 0
    length: int | None = None
    # A minted executable: what its trailer says, and the whole file's expected/actual hash.
    embedded: dict[str, Any] | None = None
    file_expected_sha256: str | None = None
    file_expected_from: str | None = None
    file_sha256: str | None = None
    exit_code: int = 0
    first_error: DXError | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.errors

    def fail(self, err: DXError, *, code: str | None = None, offset: int | None = None) -> None:
        """Record a failure; the first failure's exit code is the command's."""
        entry = {
            "code": code or getattr(err, "code", type(err).__name__),
            "message": getattr(err, "detail", None) or err.message,
            "offset": offset if offset is not None else getattr(err, "offset", None),
        }
        if getattr(err, "field", None):
            entry["field"] = err.field  # type: ignore[attr-defined]
        self.errors.append(entry)
        if self.first_error is None:
            self.first_error = err
            self.exit_code = err.exit_code

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "path": self.path,
            "kind": self.kind,
            "errors": self.errors,
            "sha256": self.sha256,
            "expected_sha256": self.expected_sha256,
            "expected_from": self.expected_from,
            "summary": self.summary,
            **({"embedded": self.embedded, "file_sha256": self.file_sha256,
                "file_expected_sha256": self.file_expected_sha256} if self.embedded is not None else {}),
        }


def detect_kind(path: str) -> str:
    """'gguf' by magic, 'executable' when a DX trailer is found, else 'gguf' (which then says why not)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # never open() a FIFO or device: it may block
            return "gguf"
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return "gguf"
    if head == b"GGUF":
        return "gguf"
    if head == b"\x7fELF":
        return "executable"  # a DX executable or not: its trailer check says which
    try:
        from dxverify.trailer import find_trailer

        if find_trailer(path) is not None:
            return "executable"
    except (DXError, OSError, ImportError):
        pass
    return "gguf"


def _check_gguf(result: VerifyResult) -> None:
    from dxverify.gguf import GGUFError, read_gguf

    try:
        with read_gguf(result.path, result.offset, result.length) as gf:
            result.summary = gf.summary().to_dict()
            is_adapter = gf.get("general.type") == "adapter"
    except GGUFError as e:
        result.fail(e)
        return
    if is_adapter and result.kind == "gguf":  # a LoRA adapter file (a Modelfile's ADAPTER): loadable as one?
        from dxverify.adapter import check_adapter

        try:
            check_adapter(result.path)
        except DXError as err:
            result.fail(err, code="bad_adapter")


def _check_executable(result: VerifyResult) -> None:
    """A minted executable: the trailer says where the GGUF is and what its SHA-256 must be."""
    from dxverify.trailer import find_trailer

    try:
        em = find_trailer(result.path)
    except DXError as e:
        result.fail(e, code="bad_trailer")
        return
    if em is None:
        result.fail(MalformedInputError(f"{result.path}: no DX trailer found"), code="bad_trailer")
        return
    result.offset, result.length = em.offset, em.length
    # SHA256SUMS and --sha256 name the whole file; the embedded model is checked against the trailer.
    result.file_expected_sha256, result.file_expected_from = result.expected_sha256, result.expected_from
    result.expected_sha256, result.expected_from = em.sha256, "trailer"
    result.embedded = {k: em.metadata.get(k) for k in (
        "model", "tier", "os", "arch", "dx_version", "llama_cpp_commit", "source", "runtime_size")}
    result.embedded.update(offset=em.offset, length=em.length, file_size=em.file_size,
                           format_version=em.version, entries=[_entry_record(em, e) for e in em.entries])
    if len(em.entries) > 1:
        result.expected_from = "trailer, model entry"
    _check_gguf(result)
    if result.summary is not None:
        result.summary["embedded_at"] = em.offset
    if result.ok:
        _check_other_entries(result, em)


def _entry_record(em: Any, e: Any) -> dict[str, Any]:
    meta = em.metadata if e.role == "model" else (em.metadata.get(e.role) or {})
    return {"role": e.role, "offset": e.offset, "length": e.length, "sha256": e.sha256,
            "model": meta.get("model"), "source": meta.get("source")}


def _check_other_entries(result: VerifyResult, em: Any) -> None:
    """Each further entry's GGUF structure, then what its role must be (``_ENTRY_CHECKS``, in that order)."""
    from dxverify.gguf import GGUFError, read_gguf

    for e in em.entries[1:]:
        try:
            with read_gguf(result.path, e.offset, e.length):
                pass
        except GGUFError as err:
            result.fail(GGUFError(err.code, f"{e.role} entry at byte {e.offset}: {err.detail}", field=err.field,
                                  offset=err.offset, path=result.path))
            return
    for role, check, code, catches in _ENTRY_CHECKS:
        entry = getattr(em, role)
        if entry is None:
            continue
        try:
            check(result.path, em, entry)
        except catches as err:
            result.fail(err, code=code)
            return


def _check_projector_entry(path: str, em: Any, e: Any) -> None:
    from dxverify.projector import check_projector

    check_projector(path, e.offset, e.length, label=f"projector entry at byte {e.offset}", model=path,
                    model_offset=em.offset, model_length=em.length)


def _check_adapter_entry(path: str, em: Any, e: Any) -> None:
    from dxverify.adapter import check_adapter

    check_adapter(path, e.offset, e.length, label=f"adapter entry at byte {e.offset}", model=path,
                  model_offset=em.offset, model_length=em.length)


def _check_draft_entry(path: str, em: Any, e: Any) -> None:
    from dxverify.spec_pair import check_pair

    check_pair(path, path, target_offset=em.offset, target_length=em.length, draft_offset=e.offset,
               draft_length=e.length)


# Each further entry's role check, in the order they run (the first failure is the command's): role, check,
# the code a failure is recorded under, and which errors are recorded (any other propagates).
_ENTRY_CHECKS: tuple[tuple[str, Callable[[str, Any, Any], None], str, type[DXError]], ...] = (
    ("projector", _check_projector_entry, "bad_projector", DXError),
    ("adapter", _check_adapter_entry, "bad_adapter", DXError),
    ("draft", _check_draft_entry, "incompatible_draft", IncompatibleModelsError),
)

# What the structure checks proved about each further entry (``_check_other_entries``), as `dx verify` says it.
_ENTRY_CHECKED = {"draft": "shares the model's vocabulary", "projector": "a vision projector that fits the model",
                  "adapter": "a LoRA adapter that fits the model"}


def _check_entry_hashes(result: VerifyResult, progress: Callable[[int, int], None] | None) -> None:
    """The SHA-256 of every entry after the model (the model's is the main hash check)."""
    from dxverify.hashing import sha256_file

    for rec in (result.embedded or {}).get("entries", [])[1:]:
        try:
            got = sha256_file(result.path, rec["offset"], rec["length"], progress)
        except DXError as e:
            result.fail(e, code="unreadable")
            return
        rec["sha256_ok"] = got == rec["sha256"]
        if not rec["sha256_ok"]:
            result.fail(IntegrityError(
                f"{result.path}: the {rec['role']} entry ('{rec.get('model')}', {rec['length']} bytes at byte"
                f" {rec['offset']}) has SHA-256 {got}, its trailer entry says {rec['sha256']}",
                hint=f"the {rec['role']} model inside this executable was altered; download it again",
            ), code="sha256_mismatch", offset=rec["offset"])
            return


def _check_executable_parts(result: VerifyResult, progress: Callable[[int, int], None] | None) -> None:
    """The runtime before the model (metadata hash) and the whole file (SHA256SUMS / --sha256)."""
    from dxverify.hashing import sha256_file
    from dxverify.trailer import check_runtime, find_trailer

    try:
        em = find_trailer(result.path)
        if em is not None:
            check_runtime(em)
    except DXError as e:
        result.fail(e, code="runtime_mismatch")
        return
    if result.file_expected_sha256:
        got = sha256_file(result.path, 0, None, progress)
        result.file_sha256 = got
        if got != result.file_expected_sha256:
            result.fail(IntegrityError(
                f"{result.path}: whole-file SHA-256 mismatch: expected {result.file_expected_sha256}"
                f" ({result.file_expected_from}), got {got}",
                hint="the file is corrupt or not the one you meant; download it again",
            ), code="sha256_mismatch")


# kind -> structure check. A new kind is one function and one line here.
STRUCTURE_CHECKS: dict[str, Callable[[VerifyResult], None]] = {
    "gguf": _check_gguf,
    "executable": _check_executable,
}


def _check_hash(result: VerifyResult, progress: Callable[[int, int], None] | None) -> None:
    from dxverify.hashing import sha256_file

    try:
        result.sha256 = sha256_file(result.path, result.offset, result.length, progress)
    except DXError as e:
        result.fail(e, code="unreadable")
        return
    if result.expected_sha256 and result.sha256 != result.expected_sha256:
        err = IntegrityError(
            f"{result.path}: SHA-256 mismatch: expected {result.expected_sha256} ({result.expected_from}), "
            f"got {result.sha256}",
            hint="the file is corrupt or not the one you meant; download it again",
        )
        result.fail(err, code="sha256_mismatch", offset=result.offset)


def verify_path(
    path: str | os.PathLike[str],
    expected_sha256: str | None = None,
    *,
    hash_mode: str = "always",
    progress: Callable[[int, int], None] | None = None,
) -> VerifyResult:
    """Run every check that applies to ``path``; never raises for a bad file, records it instead.

    ``hash_mode``: "always" hashes, "expected" only when an expected hash is known, "never" skips it.
    """
    from dxverify.hashing import expected_sha256_for, normalize_sha256

    p = os.fspath(path)
    result = VerifyResult(path=p)
    if expected_sha256:
        result.expected_sha256, result.expected_from = normalize_sha256(expected_sha256), "--sha256"
    else:
        try:
            found = expected_sha256_for(p)
        except DXError as e:
            result.fail(e, code="bad_sha256sums")
            return result
        if found:
            name = Path(p).name
            result.expected_sha256 = found
            result.expected_from = "file name" if found in name.lower() else "SHA256SUMS"
    result.kind = detect_kind(p)
    STRUCTURE_CHECKS[result.kind](result)
    if result.ok and (hash_mode == "always" or (hash_mode == "expected" and result.expected_sha256)):
        _check_hash(result, progress)
        if result.ok and result.kind == "executable":
            _check_entry_hashes(result, progress)
        if result.ok and result.kind == "executable":
            _check_executable_parts(result, progress)
    return result


def _human_report(result: VerifyResult) -> str:
    from dxverify.gguf import GGUFSummary, format_summary

    lines = []
    if result.summary is not None:
        fields = {k: v for k, v in result.summary.items() if k in GGUFSummary.__dataclass_fields__}
        lines.append(format_summary(GGUFSummary(**fields), result.path))
    if result.sha256:
        how = f"matches {result.expected_from}" if result.expected_sha256 else "no expected hash known"
        lines.append(f"sha256:         {result.sha256} ({how})")
    entries = (result.embedded or {}).get("entries") or []
    if len(entries) > 1:
        lines.append(f"entries:        {len(entries)} (trailer format version {result.embedded['format_version']})")
        lines += [f"  {_entry_line(e)}" for e in entries]
    return "\n".join(lines)


def _entry_line(e: dict[str, Any]) -> str:
    return (f"{e['role']:<6} '{e.get('model')}' {e['length']} bytes at byte {e['offset']}, sha256 {e['sha256']}"
            + (f" (from {e['source']})" if e.get("source") else ""))


def _progress_printer() -> Callable[[int, int], None] | None:
    if not sys.stderr.isatty():
        return None
    last = [-1]

    def show(done: int, total: int) -> None:
        pct = done * 100 // max(total, 1)
        if pct != last[0]:
            last[0] = pct
            click.echo(f"\rhashing {pct:3d}%", err=True, nl=pct == 100)

    return show


def _check_signature(result: VerifyResult, path: str, signature: str | None, pubkey: str | None) -> str | None:
    """Ed25519 signature over the whole file (dxverify.signatures); records a failure in ``result``."""
    try:
        from dxverify.signatures import verify_file
    except ImportError:  # the compiled runtime: no `cryptography` inside
        verify_file = None

    if not pubkey:
        result.fail(IntegrityError("--signature needs --key PUB (the release public key) to check against"),
                    code="bad_signature")
        return None
    sig = signature or f"{path}.sig"
    try:
        if verify_file is None:
            _verify_with_openssl(Path(path), Path(sig), Path(pubkey))
            return f"{Path(sig).name} verified with {pubkey} (Ed25519, by openssl)"
        verify_file(Path(path), Path(sig), Path(pubkey))
    except DXError as e:
        result.fail(e, code="bad_signature")
        return None
    return f"{Path(sig).name} verified with {pubkey} (Ed25519)"


def _verify_with_openssl(path: Path, sig: Path, pubkey: Path) -> None:
    """The compiled runtime leaves `cryptography` out; OpenSSL >= 3 checks the same signature."""
    import shutil
    import subprocess

    from dxverify.errors import UnsupportedError

    openssl = shutil.which("openssl")
    if openssl is None:
        raise UnsupportedError("this dx has no Ed25519 support built in and openssl is not installed",
                               hint="install OpenSSL >= 3, or use a pip-installed dx")
    for p in (path, sig, pubkey):
        if not p.is_file():
            raise IntegrityError(f"{p} is missing")
    r = subprocess.run([openssl, "pkeyutl", "-verify", "-pubin", "-inkey", str(pubkey), "-rawin",
                        "-in", str(path), "-sigfile", str(sig)], capture_output=True, text=True)
    if r.returncode != 0 or "Signature Verified Successfully" not in r.stdout:
        raise IntegrityError(f"{path}: signature {sig.name} does not match this file and key (openssl)",
                             hint="the file, its signature or the key was altered; do not run it")


# ctx.meta key: a callable returning the executable this program runs from when it carries a model
# (set by dx's CLI; dxverify cannot import dx). `verify`/`inspect` without PATH check that file.
SELF_PATH_META = "dxverify.self_path"


def _path_or_self(ctx: click.Context, path: str | None, command: str) -> str:
    """PATH as given; left out, the executable itself (a minted dx with a model inside)."""
    if path is not None:
        return path
    from dxverify.errors import ConfigurationError

    finder = ctx.meta.get(SELF_PATH_META)
    found = finder() if finder is not None else None
    if found is None:
        raise ConfigurationError(f"{command} needs a PATH (a GGUF model or a dx executable)",
                                 hint=f"this dx carries no model of its own: dx {command} FILE")
    return str(found)


def _json_or_first_error(ctx: click.Context, result: VerifyResult, as_json: bool) -> None:
    """With --json: print the result and exit with its code. Else raise its first error, if any."""
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        ctx.exit(result.exit_code)
    err = result.first_error
    if err is not None:
        raise err


@click.command("verify")
@click.argument("path", required=False, type=click.Path(dir_okay=True, path_type=str))
@click.option(
    "--sha256",
    "sha256",
    metavar="HEX",
    help="Expected SHA-256 (else from a sha256-<hex> name or SHA256SUMS).",
)
@click.option("--json", "as_json", is_flag=True, help='Print {"ok", "errors", "sha256", "summary"} as JSON.')
@click.option("--inspect", is_flag=True, help="Also print what the model is (as `dx inspect`).")
@click.option(
    "--no-hash", is_flag=True, help="Structure only; skip SHA-256 unless an expected hash is known."
)
@click.option("--signature", type=click.Path(dir_okay=False, path_type=str), metavar="SIG",
              help="Detached Ed25519 signature of PATH (default with --key: PATH.sig).")
@click.option("--key", "pubkey", type=click.Path(dir_okay=False, path_type=str), metavar="PUB",
              help="Public key (dx-release.pub) to check --signature against.")
@click.pass_context
def verify_cmd(
    ctx: click.Context, path: str | None, sha256: str | None, as_json: bool, inspect: bool, no_hash: bool,
    signature: str | None, pubkey: str | None,
) -> None:
    """Check that PATH is a well-formed GGUF model (or DX executable) and its SHA-256 matches.

    Without PATH, a dx executable checks itself: runtime, embedded model, SHA256SUMS beside it.
    Exit 0 when valid, 3 when malformed, 4 when the hash does not match.
    """
    path = _path_or_self(ctx, path, "verify")
    result = verify_path(
        path,
        sha256,
        hash_mode="expected" if no_hash else "always",
        progress=None if as_json else _progress_printer(),
    )
    signed_by = _check_signature(result, path, signature, pubkey) if (signature or pubkey) else None
    _json_or_first_error(ctx, result, as_json)
    if inspect:
        click.echo(_human_report(result))
    elif result.sha256:
        how = f"matches {result.expected_from}" if result.expected_sha256 else "no expected hash known"
        click.echo(f"sha256 {result.sha256} ({how})")
    if result.embedded is not None:
        e = result.embedded
        click.echo(f"runtime: {e.get('runtime_size') or e['offset']} bytes (dx {e.get('dx_version')},"
                   f" tier {e.get('tier')}, llama.cpp {str(e.get('llama_cpp_commit'))[:12]})"
                   + (", SHA-256 matches the metadata" if e.get("runtime_size") else ""))
        click.echo(f"model:   '{e.get('model')}' from {e.get('source')}, {e['length']} bytes at byte {e['offset']}")
        for d in e.get("entries", [])[1:]:
            checked = ", SHA-256 matches its entry" if d.get("sha256_ok") else ""
            click.echo(f"{d['role'] + ':':<8} '{d.get('model')}' from {d.get('source')}, {d['length']} bytes at byte"
                       f" {d['offset']}{checked}; {_ENTRY_CHECKED.get(d['role'], 'checked')}")
        if result.file_sha256:
            click.echo(f"file:    sha256 {result.file_sha256} (matches {result.file_expected_from})")
    if signed_by:
        click.echo(f"signature: {signed_by}")
    s = result.summary or {}
    click.echo(
        f"{path}: OK — GGUF v{s.get('version')}, {s.get('tensor_count')} tensors, {s.get('kv_count')} keys"
        + (f", embedded at byte {result.offset}" if result.kind == "executable" else "")
    )


@click.command("inspect")
@click.argument("path", required=False, type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def inspect_cmd(ctx: click.Context, path: str | None, as_json: bool) -> None:
    """Show what model PATH holds (architecture, size, quantization...) without loading weights.

    Without PATH, a dx executable shows the model inside it.
    """
    path = _path_or_self(ctx, path, "inspect")
    result = verify_path(path, hash_mode="never")
    _json_or_first_error(ctx, result, as_json)
    click.echo(_human_report(result))
