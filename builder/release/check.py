"""Check a whole release directory: checksums, signatures, sigstore bundles, manifest.

``dxbuild verify-release DIR`` runs this before publishing and users can run it
after downloading. Every check is made and reported; the first failure is not
the last one looked at, so one run lists everything wrong. Any failure ends in
one IntegrityError naming the file(s).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dxbuild.paths import ci_dir
from dxbuild.release.keys import PUBLIC_KEY_NAME
from dxbuild.release.sigstore import BUNDLE_SUFFIX
from dxbuild.release.sums import SUMS_NAME, parse_sums
from dxverify.errors import DXError, IntegrityError
from dxverify.signatures import (
    GITHUB_ACTIONS_ISSUER,
    load_public_key,
    sha256_file,
    verify_file,
    verify_sigstore_bundle,
)

#: The sigstore trusted root DX pins (a reviewed copy of sigstore's public-good root).
PINNED_TRUSTED_ROOT = ci_dir() / "sigstore" / "trusted_root.json"


@dataclass
class ReleaseCheck:
    """What was checked, what passed and what failed (one line each)."""

    ok: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def passed(self, line: str) -> None:
        self.ok.append(line)

    def fail(self, line: str) -> None:
        self.failed.append(line)


def _check(report: ReleaseCheck, fn: Callable[[], str | None], ok_line: str) -> None:
    """Run one check; what it returns (what was verified) is added to its ok line."""
    try:
        what = fn()
    except DXError as e:
        report.fail(str(e))
    else:
        report.passed(f"{ok_line}: {what}" if what else ok_line)


def verify_release(
    directory: Path,
    *,
    public_key: Path | None = None,
    identity: str | None = None,
    issuer: str = GITHUB_ACTIONS_ISSUER,
    trusted_root: Path | None = None,
    require_signatures: bool = True,
) -> ReleaseCheck:
    """Check everything in ``directory``; returns the report, raises IntegrityError on any failure."""
    directory = Path(directory)
    report = ReleaseCheck()
    if not directory.is_dir():
        raise IntegrityError(f"{directory} is not a directory")
    sums_path = directory / SUMS_NAME
    if not sums_path.is_file():
        raise IntegrityError(f"{sums_path} is missing", hint="run `dxbuild sign DIR` to write it")

    # 1. Every file listed in SHA256SUMS exists and has that hash.
    sums: dict[str, str] = {}
    try:
        sums = parse_sums(sums_path)
    except DXError as e:
        report.fail(str(e))
    for fname, digest in sums.items():
        p = directory / fname
        if not p.is_file():
            report.fail(f"{p} is listed in {SUMS_NAME} but missing")
            continue
        actual = sha256_file(p)
        if actual != digest:
            report.fail(f"{p}: SHA-256 {actual} does not match {SUMS_NAME} ({digest})")
        else:
            report.passed(f"sha256 {fname}")

    # 2. Ed25519 signatures: SHA256SUMS must be signed, and every .sig present must verify.
    key_path = Path(public_key) if public_key else directory / PUBLIC_KEY_NAME
    sigs = sorted(directory.glob("*.sig"))
    if not key_path.is_file():
        if require_signatures or sigs:
            report.fail(f"public key {key_path} is missing: signatures cannot be checked")
    else:
        if public_key is None:
            report.notes.append(
                f"using the key shipped in the directory ({key_path.name}); pass --key to pin the one you trust"
            )
        key = None
        try:
            key = load_public_key(key_path)
        except DXError as e:
            report.fail(str(e))
        if key is not None:
            if not (directory / (SUMS_NAME + ".sig")).is_file():
                report.fail(f"{directory / (SUMS_NAME + '.sig')} is missing: {SUMS_NAME} is not signed")
            for sig in sigs:
                target = sig.with_name(sig.name[: -len(".sig")])

                def _v(target: Path = target, sig: Path = sig) -> None:
                    verify_file(target, sig, key)

                _check(report, _v, f"signature {sig.name}")
            for fname in sums:
                if not (directory / (fname + ".sig")).is_file():
                    report.fail(f"{directory / fname} has no signature {fname}.sig")

    # 3. sigstore bundles, offline against the pinned trusted root, for the expected identity.
    bundles = sorted(directory.glob("*" + BUNDLE_SUFFIX))
    if trusted_root is None and PINNED_TRUSTED_ROOT.is_file():
        trusted_root = PINNED_TRUSTED_ROOT
    if bundles and not identity:
        report.notes.append(
            f"{len(bundles)} sigstore bundle(s) not checked: pass --identity (the signing workflow's URL)"
        )
    elif identity:
        if not bundles:
            report.fail(f"no *{BUNDLE_SUFFIX} bundles in {directory}, but --identity asks for them")
        for b in bundles:
            target = b.with_name(b.name[: -len(BUNDLE_SUFFIX)])

            def _s(target: Path = target, b: Path = b) -> str:
                return verify_sigstore_bundle(target, b, identity=identity, issuer=issuer,
                                              trusted_root=trusted_root)

            _check(report, _s, f"sigstore {b.name}")

    # 4. The manifest agrees with the files and every artifact it names is covered by SHA256SUMS.
    manifest = directory / "manifest.json"
    if manifest.is_file():
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
            artifacts = doc["artifacts"] + doc.get("runtime_packs", [])  # runtime packs are checked alike
        except (ValueError, KeyError, TypeError) as e:
            report.fail(f"{manifest} is not a DX manifest: {e}")
            artifacts = []
        for a in artifacts:
            fname = a.get("file") if isinstance(a, dict) else None
            if not isinstance(fname, str) or "/" in fname:
                report.fail(f"{manifest}: artifact entry without a plain file name: {a!r:.80}")
                continue
            p = directory / fname
            if fname not in sums:
                report.fail(f"{p} is in manifest.json but not in {SUMS_NAME}")
            if not p.is_file():
                report.fail(f"{p} is in manifest.json but missing")
            elif p.stat().st_size != a.get("size") or sums.get(fname, a.get("sha256")) != a.get("sha256"):
                report.fail(f"{p}: size/sha256 in manifest.json do not match the file")
            else:
                report.passed(f"manifest {fname}")

    if report.failed:
        raise IntegrityError(
            f"release {directory} failed {len(report.failed)} check(s): " + "; ".join(report.failed)
        )
    return report
