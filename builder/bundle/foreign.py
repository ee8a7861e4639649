"""The dx runtime for another Linux CPU architecture: the pinned Nuitka, run under qemu-user.

Nuitka compiles only for the machine it runs on, and has no cross mode. The engine
cross-compiles (``toolchains/cross_gnu.py``); the runtime cannot. So for an arm64
executable on an x86_64 host DX makes a minimal arm64 Debian root from Debian's own
archive (debootstrap), installs the pinned Nuitka and the runtime's build dependencies
into a venv there, and runs the same ``dxbuild.bundle.nuitka.ensure_bundle`` inside it: every
arm64 program in the root (Python, gcc, ld) runs under ``qemu-aarch64-static`` through
the kernel's binfmt_misc. Nothing is extracted from the result by hand: the bundle entry
it writes is the same one a native arm64 machine writes, and it is moved into this host's
bundle cache under a key that adds the root's identity to the bundle's own inputs.

It is slow — tens of minutes on 2 cores, because gcc itself is emulated — and needs
root (chroot, mounts). The release workflow mints arm64 natively on an arm64 runner; this
path is for building and testing the arm64 cell on an x86_64 machine (DX_TEST_AARCH64).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

from dxbuild.bundle.nuitka import Bundle, bundle_key, engine_files, runtime_sources
from dxbuild.run_cmd import run_cmd
from dxverify.errors import EnvironmentProblem, ToolError, UnsupportedError

Echo = Callable[[str], None]

SUITE = "bookworm"  # Debian 12: Python 3.11, like the release runners' manylinux_2_17+ targets
PYTHON = "3.11"
MIRROR = "http://deb.debian.org/debian"
#: Debian's name for a DX arch, and the wheel platform tags pip may pick for it.
DEBIAN_ARCH = {"arm64": "arm64"}
WHEEL_PLATFORMS = {"arm64": ("manylinux2014_aarch64", "manylinux_2_17_aarch64")}
QEMU_BINFMT = {"arm64": "qemu-aarch64"}
#: What Nuitka needs in the root: a C compiler, Python's headers, patchelf for the onefile, and
#: ccache (Nuitka uses it when found): a rebuild after a runtime change recompiles only what changed.
DEBS = ("python3", "python3-dev", "python3-venv", "gcc", "g++", "patchelf", "ccache", "ca-certificates")
#: The runtime's build-time Python packages, pinned to this host's versions (so the arm64
#: bundle is built from the same releases as the native one). Nuitka itself comes as its sdist.
PY_PACKAGES = ("click", "zstandard", "ordered-set", "packaging", "setuptools", "wheel")
#: The packages copied into the root for ``ensure_bundle`` to import (never compiled into the runtime
#: but dx and dxverify, which are).
SOURCE_PACKAGES = ("dx", "dxverify", "dxbuild", "dxmatrix")
#: Nuitka's link-time optimisation under emulation: a single-threaded ``lto1`` link of ~15 min on
#: 2 cores (Nuitka itself says "Slow C linking detected … consider --lto=no"). Without it the
#: compile is the same C, linked plainly.
NUITKA_EXTRA = ("--lto=no",)


def foreign_problem(arch: str) -> str | None:
    """Why an ``arch`` runtime cannot be built on this machine, with the fix; None when it can."""
    if arch not in DEBIAN_ARCH:
        return f"no foreign-root recipe for {arch} (known: {', '.join(DEBIAN_ARCH)})"
    if not sys.platform.startswith("linux"):
        return "building a runtime for another arch needs Linux (qemu-user, binfmt_misc)"
    if os.geteuid() != 0:
        return "building a runtime for another arch needs root (debootstrap, chroot, mounts): run dxbuild as root"
    missing = [p for p in ("debootstrap", "chroot", "mount") if shutil.which(p) is None]
    if missing:
        return f"{', '.join(missing)} not found: apt-get install -y debootstrap"
    name = QEMU_BINFMT[arch]
    if shutil.which(f"{name}-static") is None:
        return f"{name}-static not found: apt-get install -y qemu-user-static"
    if not _binfmt_registered(name) and not Path(f"/usr/lib/binfmt.d/{name}.conf").is_file():
        return f"{name} is not registered with binfmt_misc: apt-get install -y qemu-user-static binfmt-support"
    return None


def _binfmt_registered(name: str) -> bool:
    entry = Path("/proc/sys/fs/binfmt_misc") / name
    try:
        return entry.read_text().startswith("enabled")
    except OSError:
        return False


def ensure_binfmt(arch: str, echo: Echo | None) -> None:
    """Make the kernel run ``arch`` programs through qemu-user (Debian's own registration line).

    The ``F`` flag in Debian's line opens the interpreter now, so it also works inside the chroot.
    """
    name = QEMU_BINFMT[arch]
    if _binfmt_registered(name):
        return
    mount_point = Path("/proc/sys/fs/binfmt_misc")
    if not (mount_point / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(mount_point)], check=False,
                       capture_output=True)
    line = Path(f"/usr/lib/binfmt.d/{name}.conf").read_text().strip()
    if echo:
        echo(f"registering {name} with binfmt_misc (from /usr/lib/binfmt.d/{name}.conf)")
    try:
        (mount_point / "register").write_text(line)
    except OSError as e:
        raise EnvironmentProblem(f"could not register {name} with binfmt_misc: {e.strerror}",
                                 hint="run `update-binfmts --enable " + name + "` (package binfmt-support)") from None
    if not _binfmt_registered(name):
        raise EnvironmentProblem(f"{name} is still not enabled in binfmt_misc",
                                 hint="run `update-binfmts --enable " + name + "` (package binfmt-support)")


def _pins() -> list[str]:
    from dxbuild.bundle.nuitka import NUITKA_VERSION

    pins = []
    for name in PY_PACKAGES:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)  # not on this host (wheel): the newest for the root's Python
    return [*pins, f"nuitka=={NUITKA_VERSION}"]


def root_key(arch: str) -> str:
    """Everything that decides what the root holds."""
    spec = {"suite": SUITE, "mirror": MIRROR, "arch": arch, "debs": DEBS, "pins": _pins(), "format": 1}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def _mounted(root: Path) -> Iterator[None]:
    """/proc and /dev inside the root for as long as programs run there (gcc, Python need them)."""
    done: list[Path] = []
    try:
        for src, dest, args in (("proc", root / "proc", ["-t", "proc"]), ("/dev", root / "dev", ["--bind"])):
            dest.mkdir(exist_ok=True)
            subprocess.run(["mount", *args, src, str(dest)], check=True, capture_output=True)
            done.append(dest)
        yield
    except subprocess.CalledProcessError as e:
        raise EnvironmentProblem(f"could not mount {e.cmd[-2]} in {root}: {e.stderr.decode(errors='replace').strip()}",
                                 hint="run dxbuild as root outside a restricted container") from None
    finally:
        for dest in reversed(done):
            subprocess.run(["umount", "-l", str(dest)], check=False, capture_output=True)


def _chroot_env() -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root", "LANG": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive"}


def ensure_root(arch: str, cache: Path, echo: Echo | None = None) -> Path:
    """The arm64 Debian root with the pinned Nuitka in ``/opt/dx/venv``: from the cache, or made now."""
    key = root_key(arch)
    roots = cache / "roots"
    root = roots / f"debian-{SUITE}-{arch}-{key[:16]}"
    if (root / "opt" / "dx" / "root.json").is_file():
        return root
    roots.mkdir(parents=True, exist_ok=True)
    log = roots / f"debian-{SUITE}-{arch}-{key[:16]}.log"
    work = Path(tempfile.mkdtemp(prefix=f".debian-{arch}-", dir=roots))
    try:
        if echo:
            echo(f"making a {SUITE} {arch} root with debootstrap (minutes; log: {log})")
        run_cmd(["debootstrap", f"--arch={DEBIAN_ARCH[arch]}", "--variant=minbase", f"--include={','.join(DEBS)}",
                 SUITE, str(work), MIRROR], log=log, echo=echo, what="debootstrap")
        wheels = work / "opt" / "dx" / "wheels"
        wheels.mkdir(parents=True)
        pins = _pins()
        platforms = [a for p in WHEEL_PLATFORMS[arch] for a in ("--platform", p)]
        run_cmd([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheels), "--only-binary=:all:",
                 *platforms, "--python-version", PYTHON, "--implementation", "cp",
                 *[p for p in pins if not p.startswith("nuitka")]], log=log, echo=echo, what="pip download (wheels)")
        run_cmd([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheels), "--no-deps",
                 "--no-binary=:all:", pins[-1]], log=log, echo=echo, what="pip download (Nuitka)")
        venv = "/opt/dx/venv"
        pip = [f"{venv}/bin/python", "-m", "pip", "install", "--quiet", "--no-index", "--find-links", "/opt/dx/wheels"]
        with _mounted(work):
            chroot = ["chroot", str(work)]
            env = _chroot_env()
            run_cmd([*chroot, "python3", "-m", "venv", venv], log=log, env=env, echo=echo, what="venv in the root")
            run_cmd([*chroot, *pip, *[p for p in pins if not p.startswith("nuitka")]], log=log, env=env, echo=echo,
                    what="pip install in the root")
            run_cmd([*chroot, *pip, "--no-build-isolation", pins[-1]], log=log, env=env, echo=echo,
                    what="pip install Nuitka in the root")
            probe = subprocess.run([*chroot, f"{venv}/bin/python", "-c", "import sys; print(sys.version)"],
                                   env=env, capture_output=True, text=True)
            if probe.returncode != 0:
                raise ToolError(f"the root's Python does not start under qemu: {probe.stderr.strip()[-300:]}",
                                hint=f"see {log}, then mint again (the half-made root is removed)")
            version = probe.stdout.strip()
        (work / "opt" / "dx" / "root.json").write_text(json.dumps(
            {"key": key, "suite": SUITE, "arch": arch, "python": version, "pins": pins}, indent=1))
        if root.exists():
            shutil.rmtree(root)
        os.replace(work, root)
    finally:
        if work.exists():
            _remove_root(work)
    return root


def _remove_root(path: Path) -> None:
    for sub in ("proc", "dev"):  # never follow a mount that was left behind
        subprocess.run(["umount", "-l", str(path / sub)], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


_INSIDE = """\
import json, sys
from pathlib import Path
from dxbuild.bundle.nuitka import ensure_bundle
b = ensure_bundle(Path(sys.argv[1]), tier=sys.argv[2], engine_key=sys.argv[3], cache=Path(sys.argv[4]), echo=print,
                  extra_options=tuple(json.loads(sys.argv[5])))
print("DX-BUNDLE " + json.dumps({"path": str(b.path), "key": b.key, "unpack_spec": b.unpack_spec}), flush=True)
"""


def foreign_key(engine_dir: Path, tier: str, engine_key: str, arch: str, root_python: str) -> str:
    """The host-side key: every input of the bundle, plus the root it is compiled in."""
    from dx import __version__ as dx_version

    inner = bundle_key(engine_key, tier, runtime_sources(), engine_files(engine_dir), dx_version,
                       extra_options=NUITKA_EXTRA)
    return hashlib.sha256(f"dx-foreign-bundle-1\0{arch}\0{root_key(arch)}\0{root_python}\0{inner}".encode()).hexdigest()


def ensure_foreign_bundle(engine_dir: Path, *, tier: str, engine_key: str, arch: str, cache: Path | None = None,
                          echo: Echo | None = None) -> Bundle:
    """The ``arch`` runtime onefile for this engine: from the cache, or compiled under qemu now (~30 min)."""
    from dxbuild.paths import cache_dir

    t0 = time.monotonic()
    cache = cache or cache_dir()
    problem = foreign_problem(arch)
    if problem:
        raise UnsupportedError(f"cannot build the {arch} dx runtime here: {problem}",
                               hint=f"or mint it on an {arch} machine (the release workflow does)")
    ensure_binfmt(arch, echo)
    root = ensure_root(arch, cache, echo)
    root_python = json.loads((root / "opt" / "dx" / "root.json").read_text())["python"]
    key = foreign_key(engine_dir, tier, engine_key, arch, root_python)
    entry = cache / "bundles" / key[:16]
    meta_path = entry / "bundle.json"
    if (entry / "dx").is_file() and meta_path.is_file():
        with contextlib.suppress(ValueError, KeyError):
            meta = json.loads(meta_path.read_text())
            if meta["key"] == key and meta["size"] == (entry / "dx").stat().st_size:
                return Bundle(entry / "dx", key, True, time.monotonic() - t0, meta["unpack_spec"])
    # Fresh copies of the sources and the engine inside the root for this one build.
    job = root / "opt" / "dx" / "job"
    shutil.rmtree(job, ignore_errors=True)
    (job / "src").mkdir(parents=True)
    for pkg in SOURCE_PACKAGES:
        src = Path(__import__(pkg).__file__ or "").parent
        shutil.copytree(src, job / "src" / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(engine_dir, job / "engine", symlinks=True)
    (job / "inside.py").write_text(_INSIDE)
    log = cache / "bundles" / f"{key[:16]}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if echo:
        echo(f"compiling the {arch} dx runtime with Nuitka under qemu in {root} (tens of minutes on 2 cores; log: {log})")
    found: dict[str, str] = {}

    def on_line(line: str) -> None:
        if line.startswith("DX-BUNDLE "):
            found.update(json.loads(line[len("DX-BUNDLE "):]))

    env = {**_chroot_env(), "PYTHONPATH": "/opt/dx/job/src", "CCACHE_DIR": "/opt/dx/ccache"}
    with _mounted(root):
        run_cmd(["chroot", str(root), "/opt/dx/venv/bin/python", "-X", "utf8", "/opt/dx/job/inside.py",
                 "/opt/dx/job/engine", tier, engine_key, "/opt/dx/cache", json.dumps(NUITKA_EXTRA)],
                log=log, env=env, echo=echo, on_line=on_line, what=f"Nuitka under qemu ({arch} runtime bundle)")
    if not found:
        raise ToolError(f"the {arch} bundle build printed no result", hint=f"see {log}")
    built = root / found["path"].lstrip("/")
    staged = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=cache / "bundles"))
    try:
        shutil.copy2(built, staged / "dx")
        inner = json.loads((built.parent / "bundle.json").read_text())
        (staged / "bundle.json").write_text(json.dumps({
            **inner, "key": key, "inner_key": found["key"], "arch": arch, "built_in": str(root),
            "root_python": root_python, "size": (staged / "dx").stat().st_size}, indent=2))
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(staged, entry)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        shutil.rmtree(job, ignore_errors=True)
    return Bundle(entry / "dx", key, False, time.monotonic() - t0, found["unpack_spec"])
