"""The distribution tests' helpers and fixtures: a signed release directory, a loopback
HTTP server serving it, and a fake machine for install.sh to detect.

The release is real: executables of the real ``dx`` CLI (a zipapp of the
runtime: it runs ``dx version``), checksummed and Ed25519-signed by the trust
helper's own ``sign_directory``, with the manifest twin in HACKING.md's format.
Only the hardware is fake, through the thinnest hooks install.sh has: PATH
shims for ``uname``/``nvidia-smi``/``lspci``/``sysctl``/``rocminfo`` and
``DX_INSTALL_ROOT`` standing in for ``/`` when it reads ``/proc``, ``/sys`` and ``/opt``.
"""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import hashlib
import http.server
import os
import shutil
import stat
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest

from dxbuild.paths import project_root
from dxbuild.release.install_script import render_install_script
from dxbuild.release.keys import keygen

SHELLS = {
    "dash": ["dash"],
    "bash": ["bash", "--posix"],
    "busybox": ["busybox", "sh"],
}

# (tier, os, arch, min_driver) of the release the tests install from; os/arch
# spelled as the matrix spells them (macos, arm64).
RELEASE_CELLS = [
    ("cpu", "linux", "x86_64", None),
    ("cuda12", "linux", "x86_64", 525),
    ("cuda13", "linux", "x86_64", 580),
    ("vulkan", "linux", "x86_64", None),
    ("rocm", "linux", "x86_64", None),
    ("cpu", "linux", "arm64", None),
    ("cuda13", "linux", "arm64", 580),
    ("cpu", "macos", "arm64", None),
    ("metal", "macos", "arm64", None),
    ("cpu", "windows", "x86_64", None),
]

# Tools install.sh may use; everything else is absent from its PATH.
TOOLS = ["awk", "cat", "chmod", "cp", "curl", "wget", "grep", "head", "mkdir", "mktemp", "mv",
         "openssl", "rm", "sha256sum", "shasum", "perl", "sort", "tr", "wc", "sed", "env", "sleep", "tar", "xz"]


def _dx_zipapp(dest: Path, comment: str) -> None:
    """A runnable ``dx``: the runtime and verify packages in a zip with a shebang.

    The zip comment makes each artifact's bytes (and SHA-256) distinct, so a test
    can tell which one was installed.
    """
    root = project_root()
    tmp = dest.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(b"#!/usr/bin/env python3\n")
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for pkg, folder in (("dx", "runtime"), ("dxverify", "verify")):
                for p in sorted((root / folder).rglob("*.py")):
                    z.write(p, f"{pkg}/{p.relative_to(root / folder)}")
            z.writestr("__main__.py", "from dx.cli import main\nmain()\n")
            z.comment = comment.encode()
    tmp.chmod(0o755)
    os.replace(tmp, dest)


@dataclasses.dataclass
class Release:
    dir: Path
    public_key: Path
    version: str
    files: dict[tuple[str, str, str], str]  # (tier, os, arch) -> file name

    def sha256(self, name: str) -> str:
        return hashlib.sha256((self.dir / name).read_bytes()).hexdigest()

    def copy(self, dest: Path) -> Release:
        shutil.copytree(self.dir, dest)
        return dataclasses.replace(self, dir=dest)


def write_facts(directory: Path, name: str, tier: str, os_name: str, arch: str, min_driver: int | None,
                version: str, model: str | None = None) -> None:
    """The facts file a CI job leaves next to its executable (dxbuild.steps.manifest's format)."""
    from dxbuild.release.manifest import FACTS_FORMAT
    from dxbuild.release.manifest import write_facts as write

    exe = directory / name
    write(exe, {
        "dx_facts": FACTS_FORMAT, "file": name, "tier": tier, "os": os_name, "arch": arch,
        "dx_version": version, "size": exe.stat().st_size,
        "sha256": hashlib.sha256(exe.read_bytes()).hexdigest(),
        "engine": {}, "model": {"name": model} if model else None,
        "requirements": {"min_nvidia_driver": min_driver, "needs": []},
    })


def finish_release(directory: Path, key_dir: Path) -> None:
    """What the release job does once every cell's files are gathered: manifest, then sign."""
    from dxbuild.release.keys import find_signing_key
    from dxbuild.release.manifest import manifest_for_directory
    from dxbuild.steps.sign import sign_directory

    manifest_for_directory(directory)
    sign_directory(directory, find_signing_key(key_dir / "dx-release.key"))


def make_release(directory: Path, key_dir: Path, cells=RELEASE_CELLS, model: str | None = None,
                 version: str = "0.1.0") -> Release:
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for tier, os_name, arch, min_driver in cells:
        stem = f"dx-{model}-{tier}-{os_name}-{arch}" if model else f"dx-{tier}-{os_name}-{arch}"
        name = stem + (".exe" if os_name == "windows" else "")
        _dx_zipapp(directory / name, f"dx {version} {tier} {os_name} {arch} {model or ''}")
        write_facts(directory, name, tier, os_name, arch, min_driver, version, model)
        files[(tier, os_name, arch)] = name
    finish_release(directory, key_dir)
    return Release(dir=directory, public_key=key_dir / "dx-release.pub", version=version, files=files)


@pytest.fixture(scope="session")
def release_keys(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    keygen(d)
    return d


@pytest.fixture(scope="session")
def signed_release(tmp_path_factory, release_keys) -> Release:
    """A signed release directory; tests that tamper with it take ``release.copy()``."""
    return make_release(tmp_path_factory.mktemp("rel") / "release", release_keys)


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single byte ranges (what ``curl -C -`` and ``wget -c`` send)."""

    served_dir = "."
    ranges = True
    log: list[tuple[str, str | None]]

    def __init__(self, *a, **kw):
        super().__init__(*a, directory=self.served_dir, **kw)

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def send_head(self):
        self.log.append((self.path, self.headers.get("Range")))
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not rng or not self.ranges or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        try:
            start_s, end_s = rng.removeprefix("bytes=").split("-", 1)
            start = int(start_s)
            end = int(end_s) if end_s else size - 1
        except ValueError:
            return super().send_head()
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return None
        f = open(path, "rb")  # noqa: SIM115 - closed by copyfile's caller
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Last-Modified", email.utils.formatdate(os.path.getmtime(path), usegmt=True))
        self.end_headers()
        return f


class ReleaseServer:
    """A loopback HTTP server over one directory; ``requests`` records what was asked."""

    def __init__(self, directory: Path, ranges: bool = True) -> None:
        self.requests: list[tuple[str, str | None]] = []
        handler = type("Handler", (_RangeHandler,), {"served_dir": str(directory), "log": self.requests,
                                                     "ranges": ranges})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/release"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(tmp_path):
    """serve(release) -> ReleaseServer with the release at URL/release/…"""
    servers = []

    def _serve(release: Release, ranges: bool = True) -> ReleaseServer:
        web = tmp_path / f"web{len(servers)}"
        web.mkdir()
        (web / "release").symlink_to(release.dir)
        s = ReleaseServer(web, ranges=ranges)
        servers.append(s)
        return s

    yield _serve
    for s in servers:
        s.close()


@functools.cache
def _tools_dir(base: str) -> Path:
    d = Path(base) / "tools"
    d.mkdir(exist_ok=True)
    for t in TOOLS:
        found = shutil.which(t)
        if found and not (d / t).exists():
            (d / t).symlink_to(found)
    return d


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@dataclasses.dataclass
class Machine:
    """A fake machine for install.sh: shims on PATH and a fake root for /proc and /sys."""

    base: Path
    os: str = "Linux"
    arch: str = "x86_64"
    cpu_flags: str = "fpu sse4_2 avx avx2 fma f16c"
    nvidia_smi: str | None = None        # driver version nvidia-smi reports
    nvidia_proc: str | None = None       # driver version in /proc/driver/nvidia/version
    pci: tuple[str, ...] = ()            # vendor ids of display devices in sysfs: "0x10de", ...
    lspci: str = ""                      # what the lspci shim prints
    rocm: str | None = None              # /opt/rocm/.info/version
    vulkan: bool = False                 # libvulkan.so.1 present
    rosetta: bool = False
    uid: int = 1000                      # what `id -u` says: never 0, so nothing lands in /usr/local
    hide: tuple[str, ...] = ()           # tools to take off PATH (curl, openssl, ...)
    shims: tuple[tuple[str, str], ...] = ()  # extra (name, sh body) shims, e.g. wget -> busybox wget
    shared_tools: Path | None = None

    def build(self) -> dict[str, str]:
        if not hasattr(self, "_env"):
            self._env = self._build()
        return dict(self._env)

    def _build(self) -> dict[str, str]:
        shims = self.base / "shims"
        root = self.base / "root"
        tools = self.base / "tools-own"
        for d in (shims, root, tools):
            d.mkdir(parents=True, exist_ok=True)
        _script(shims / "uname", f'case "${{1:-}}" in -m) echo {self.arch} ;; *) echo {self.os} ;; esac\n')
        for name, body in self.shims:
            _script(shims / name, body)
        _script(shims / "id", f'case "${{1:-}}" in -u) echo {self.uid} ;; *) echo "uid={self.uid}" ;; esac\n')
        if self.nvidia_smi == "FAIL":  # what nvidia-smi says, on stdout, when the driver is not loaded
            _script(shims / "nvidia-smi", "echo \"NVIDIA-SMI has failed because it couldn't communicate with the"
                                          " NVIDIA driver. Make sure that the latest NVIDIA driver is installed and"
                                          " running.\"\nexit 9\n")
        elif self.nvidia_smi:
            _script(shims / "nvidia-smi", f'echo "{self.nvidia_smi}, NVIDIA Test GPU"\n')
        _script(shims / "lspci", f"cat <<'EOF'\n{self.lspci}\nEOF\n" if self.lspci else "exit 0\n")
        translated = 1 if self.rosetta else 0
        _script(shims / "sysctl", f'case "$*" in *proc_translated*) echo {translated} ;; *brand*) echo "Apple M2" ;;'
                                  ' *) exit 1 ;; esac\n')
        if self.rocm:
            _script(shims / "rocminfo", "echo ROCk module is loaded\n")
            (root / "opt/rocm/.info").mkdir(parents=True)
            (root / "opt/rocm/.info/version").write_text(self.rocm + "\n")
        (root / "proc").mkdir(exist_ok=True)
        key = "Features" if self.arch in ("aarch64", "arm64") else "flags"
        (root / "proc/cpuinfo").write_text(f"processor\t: 0\n{key}\t\t: {self.cpu_flags}\n\n")
        if self.nvidia_proc:
            (root / "proc/driver/nvidia").mkdir(parents=True)
            (root / "proc/driver/nvidia/version").write_text(
                f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {self.nvidia_proc}  Release Build\n"
                "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
        for i, vendor in enumerate(self.pci):
            dev = root / f"sys/bus/pci/devices/0000:0{i + 1}:00.0"
            dev.mkdir(parents=True)
            (dev / "class").write_text("0x030000\n")
            (dev / "vendor").write_text(vendor + "\n")
        if self.vulkan:
            (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
            (root / "usr/lib/x86_64-linux-gnu/libvulkan.so.1").write_bytes(b"")
        assert self.shared_tools is not None
        for t in os.listdir(self.shared_tools):
            if t not in self.hide and not (tools / t).exists():
                (tools / t).symlink_to(os.readlink(self.shared_tools / t))
        home = self.base / "home"
        home.mkdir(exist_ok=True)
        (self.base / "tmp").mkdir(exist_ok=True)
        return {"PATH": f"{shims}:{tools}", "HOME": str(home), "DX_INSTALL_ROOT": str(root),
                "TMPDIR": str(self.base / "tmp"), "LC_ALL": "C"}

    def leftover_temp_files(self) -> list[Path]:
        return list((self.base / "tmp").iterdir())


@dataclasses.dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture
def machine(tmp_path, tmp_path_factory):
    """machine(**facts) -> Machine; the tools directory is shared by the session."""
    shared = _tools_dir(str(tmp_path_factory.getbasetemp()))
    count = [0]

    def _make(**facts) -> Machine:
        count[0] += 1
        return Machine(base=tmp_path / f"m{count[0]}", shared_tools=shared, **facts)

    return _make


def render_to(path: Path, base_url: str, public_key: Path | None) -> Path:
    from dxbuild.release.install_script import load_public_key_pem

    pem = load_public_key_pem(public_key) if public_key else None
    path.write_text(render_install_script(base_url, pem))
    return path


def run_install(shell: str, script: Path, machine: Machine, *args: str, env: dict[str, str] | None = None,
                stdin: str | None = None, timeout: float = 60) -> Result:
    e = machine.build()
    e.update(env or {})
    cmd = [*SHELLS[shell], str(script), *args] if stdin is None else [*SHELLS[shell], "-s", "--", *args]
    shell_path = shutil.which(SHELLS[shell][0])
    assert shell_path, f"{shell} is not installed"
    cmd[0] = shell_path
    p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=timeout, input=stdin,
                       cwd=machine.base)
    return Result(p.returncode, p.stdout, p.stderr)
