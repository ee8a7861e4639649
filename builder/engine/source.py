"""Fetch the engine source, check its hash, unpack it once, apply DX's patches.

The source is the one input every engine byte derives from, so it is checked
before anything reads it: an sdist's SHA-256 is compared before the archive is
opened (pip checks it too, with ``--require-hashes``), a git checkout must sit
at exactly the pinned commit, a local directory must hash to the pinned tree
hash. Pristine trees live in ``sources/<sha256>/`` and patched trees in
``sources/patched-<key>/``; both are built under a temporary name and renamed
into place, so an interrupted fetch leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dxbuild.paths import cache_dir
from dxbuild.run_cmd import Echo, capture, require_tool, run_cmd, stderr_echo
from dxmatrix.recipes import EngineRecipe, EngineSource
from dxverify.errors import ConfigurationError, IntegrityError, MalformedInputError, ToolError
from dxverify.hashing import sha256_file


@dataclass(frozen=True)
class SourceTree:
    """A verified llama.cpp tree ready for CMake."""

    path: Path              # the llama.cpp folder (with CMakeLists.txt)
    identity: str           # what the bytes are: "sdist:<sha256>", "git:<url>@<commit>", "dir:<treehash>"
    sha256: str             # sdist sha256, tree hash, or commit id
    llama_cpp_commit: str   # upstream commit when known, else ""
    patches: tuple[tuple[str, str], ...] = ()   # (file name, sha256) applied in order


def _sources_root(cache: Path | None) -> Path:
    return (cache or cache_dir()) / "sources"


def _atomic_dir(final: Path) -> Path:
    """A fresh temporary sibling of ``final`` to build into before renaming."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


def _publish(tmp: Path, final: Path) -> None:
    try:
        os.rename(tmp, final)
    except OSError:
        # someone else finished first: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise


# ------------------------------------------------------------------ sdist


def verify_sha256(path: Path, expected: str, what: str) -> None:
    """Raise IntegrityError unless ``path`` hashes to ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise IntegrityError(
            f"{what}: SHA-256 mismatch for {path.name}: expected {expected}, got {actual}",
            hint="the download is not the pinned file; nothing was unpacked. Check the recipe's sha256",
        )


def unpack_sdist(archive: Path, expected_sha256: str, dest: Path) -> Path:
    """Check ``archive`` against ``expected_sha256``, then unpack it into ``dest`` atomically.

    The hash is checked before the archive is opened: a mismatch leaves ``dest``
    untouched. Members are extracted with tarfile's ``data`` filter, so no
    absolute path, ``..``, device or link outside the tree gets through.
    """
    verify_sha256(archive, expected_sha256, "engine source")
    if dest.is_dir():
        return dest
    tmp = _atomic_dir(dest)
    try:
        try:
            with tarfile.open(archive, "r:*") as tf:
                tf.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise MalformedInputError(f"engine source {archive}: cannot unpack: {e}") from None
        _publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def download_sdist(src: EngineSource, cache: Path, log: Path, echo: Echo | None = stderr_echo) -> Path:
    """The pinned sdist in ``downloads/``, fetched with pip (hash-pinned) if not there yet."""
    downloads = cache / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    stem = f"{src.package.replace('-', '_')}-{src.version}"
    for cand in downloads.glob(f"{stem}.tar.gz"):
        if sha256_file(cand) == src.sha256:
            return cand
    tmp = Path(tempfile.mkdtemp(prefix=".pip-download-", dir=downloads))
    try:
        req = tmp / "requirements.txt"
        req.write_text(f"{src.package}=={src.version} --hash=sha256:{src.sha256}\n")
        try:
            run_cmd(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 "--no-build-isolation", "--require-hashes", "--disable-pip-version-check",
                 "-d", tmp / "out", "-r", req],
                log=log, echo=echo, what=f"pip download {src.package}=={src.version}",
            )
        except ToolError as e:
            m = re.search(r"Got\s+([0-9a-f]{64})", e.message)
            if m or "DO NOT MATCH THE HASHES" in e.message:
                got = m.group(1) if m else "a different hash"
                raise IntegrityError(
                    f"engine source {src.package}=={src.version}: SHA-256 mismatch: expected {src.sha256}, got {got}",
                    hint=f"nothing was unpacked; check sha256 in the engine recipe (log: {log})",
                ) from None
            raise
        got_files = list((tmp / "out").glob("*.tar.gz"))
        if len(got_files) != 1:
            raise ToolError(f"pip download produced {len(got_files)} archives, expected one sdist (log: {log})")
        verify_sha256(got_files[0], src.sha256, "engine source")
        final = downloads / got_files[0].name
        os.replace(got_files[0], final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ git and dir


def tree_hash(root: Path) -> str:
    """A stable SHA-256 over a directory's regular files (relative path, mode bit x, bytes).

    Version-control folders and build outputs are left out, so a checkout hashes
    the same wherever it sits.
    """
    h = hashlib.sha256()
    skip = {".git", "build", "__pycache__", ".cache"}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_symlink():
                h.update(f"L {p.relative_to(root).as_posix()} {os.readlink(p)}\n".encode())
                continue
            if not p.is_file():
                continue
            x = "x" if os.access(p, os.X_OK) else "-"
            h.update(f"F {p.relative_to(root).as_posix()} {x} {sha256_file(p)}\n".encode())
    return h.hexdigest()


def _fetch_git(src: EngineSource, cache: Path, log: Path, echo: Echo | None) -> Path:
    dest = _sources_root(cache) / f"git-{src.commit}"
    if dest.is_dir():
        return dest
    git = require_tool("git", hint="install git, or use an sdist or dir engine source")
    tmp = _atomic_dir(dest)
    try:
        run_cmd([git, "init", "-q", tmp], log=log, echo=echo, what="git init")
        run_cmd([git, "-C", tmp, "fetch", "-q", "--depth", "1", src.url, src.commit],
                log=log, echo=echo, what=f"git fetch {src.url} {src.commit}")
        run_cmd([git, "-C", tmp, "checkout", "-q", "FETCH_HEAD"], log=log, echo=echo, what="git checkout")
        head = capture([git, "-C", tmp, "rev-parse", "HEAD"]).strip()
        if head != src.commit:
            raise IntegrityError(f"engine source {src.url}: checked out {head}, expected commit {src.commit}")
        shutil.rmtree(tmp / ".git")
        _publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _check_dir(src: EngineSource, recipe_dir: Path) -> Path:
    root = (recipe_dir / src.path).resolve()
    if not (root / "CMakeLists.txt").is_file():
        raise ConfigurationError(f"engine source path {root} is not a llama.cpp tree (no CMakeLists.txt)",
                                 hint="point source.path at the llama.cpp folder")
    actual = tree_hash(root)
    if actual != src.sha256:
        raise IntegrityError(
            f"engine source {root}: tree hash mismatch: expected {src.sha256}, got {actual}",
            hint="if you changed the tree on purpose, put the new hash in source.sha256",
        )
    return root


# ------------------------------------------------------------------ patches


def apply_patches(tree: Path, patches: list[Path], log: Path, echo: Echo | None = stderr_echo) -> None:
    """Apply ``patches`` in order; each is checked to apply cleanly first (no fuzz, no offsets left over)."""
    patch = shutil.which("patch")
    git = shutil.which("git")
    if not patch and not git:
        raise ToolError("applying DX's patches needs `patch` or `git`", hint="install one of them")
    for p in patches:
        if patch:
            check = [patch, "-p1", "--dry-run", "--forward", "--fuzz=0", "--batch", "-i", str(p)]
            apply = [patch, "-p1", "--forward", "--fuzz=0", "--batch", "--no-backup-if-mismatch", "-i", str(p)]
        else:
            check = [git, "apply", "--check", "-p1", str(p)]
            apply = [git, "apply", "-p1", str(p)]
        try:
            run_cmd(check, log=log, cwd=tree, echo=echo, what=f"patch {p.name} (check)")
        except ToolError as e:
            raise ToolError(f"patch {p.name} does not apply cleanly to the engine source; log: {log}",
                            hint="refresh the patch against the pinned source") from e
        run_cmd(apply, log=log, cwd=tree, echo=echo, what=f"patch {p.name}")


def _patched_tree(pristine: Path, identity: str, patches: list[Path], cache: Path, log: Path,
                  echo: Echo | None) -> tuple[Path, tuple[tuple[str, str], ...]]:
    applied = tuple((p.name, sha256_file(p)) for p in patches)
    if not patches:
        return pristine, applied
    key = hashlib.sha256(repr((identity, applied)).encode()).hexdigest()[:16]
    dest = _sources_root(cache) / f"patched-{key}"
    if dest.is_dir():
        return dest, applied
    tmp = _atomic_dir(dest)
    try:
        shutil.copytree(pristine, tmp, symlinks=True, dirs_exist_ok=True)
        apply_patches(tmp, patches, log, echo)
        _publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest, applied


# ------------------------------------------------------------------ entry point


def prepare_source(recipe: EngineRecipe, *, cache: Path | None = None, log: Path,
                   echo: Echo | None = stderr_echo) -> SourceTree:
    """The verified, patched llama.cpp tree for ``recipe`` (cached; cheap when already there)."""
    cache = cache or cache_dir()
    src = recipe.source
    if src.kind == "sdist":
        root = _sources_root(cache) / src.sha256
        if not root.is_dir():
            archive = download_sdist(src, cache, log, echo)
            unpack_sdist(archive, src.sha256, root)
        tops = [d for d in root.iterdir() if d.is_dir()]
        if len(tops) != 1:
            raise MalformedInputError(f"engine source {root}: expected one top-level folder in the sdist")
        pristine = tops[0] / src.subdir if src.subdir else tops[0]
        digest = src.sha256
    elif src.kind == "git":
        pristine = _fetch_git(src, cache, log, echo) / src.subdir
        digest = src.commit
    else:
        pristine = _check_dir(src, recipe.recipe_dir) / src.subdir
        digest = src.sha256
    if not (pristine / "CMakeLists.txt").is_file():
        raise ConfigurationError(f"engine source: {pristine} has no CMakeLists.txt",
                                 hint="check source.subdir in recipes/engine.toml")
    path, applied = _patched_tree(pristine, src.identity, recipe.patch_paths(), cache, log, echo)
    commit = src.commit if src.kind in ("git", "sdist") else ""
    return SourceTree(path=path, identity=src.identity, sha256=digest, llama_cpp_commit=commit, patches=applied)
