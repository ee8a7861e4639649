"""The CUDA runtime pack: cuBLAS, cuBLASLt and cudart once per machine (DESIGN.md §8).

``dxbuild runtime-pack --cuda 13 -o DIR`` writes
``DIR/dx-cuda13-runtime-linux-<arch>.tar.xz`` from NVIDIA's own pip wheels
(``nvidia-cublas``, ``nvidia-cuda-runtime``: the versions and SHA-256s pinned
for the tier's toolkit in ``recipes/tiers.toml``), with the wheels' licence
files, plus its facts file; then the directory's manifest, SHA256SUMS and
Ed25519 signatures are (re)written, as for an executable. ``install.sh``
installs it once into a shared, versioned folder that every thin cuda
executable finds (``dx.host.cuda_libs``).

Why ``.tar.xz`` and not ``.tar.zst``: install.sh is POSIX sh and must unpack
it with what a stock machine has. ``xz`` is in every Debian/Ubuntu base
image (xz-utils is Priority: required), Fedora, Arch and Alpine, and in
busybox (``xz -d``/``unxz``); ``zstd`` and ``tar --zstd`` are often absent
(Debian's base image has neither). xz is also smaller than zstd -19 on this
SASS-heavy data, and unpacking 600 MB takes seconds, once per machine.

Deterministic: members sorted, mtime fixed (``SOURCE_DATE_EPOCH``, else
the engine's 1980 epoch), owner 0/0 with no names, modes 0644/0755, a
single-threaded xz stream (its bytes depend only on the input): two builds
from the same wheels give the same SHA-256.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import re
import shutil
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dxbuild.paths import cache_dir as default_cache_dir
from dxbuild.run_cmd import run_cmd
from dxverify.errors import ConfigurationError, IntegrityError, MalformedInputError
from dxverify.hashing import sha256_file

#: The wheels a pack is made of, and the libraries taken from each (the SONAME names).
PACK_WHEELS = {13: {"nvidia-cuda-runtime": ("libcudart.so.13",),
                    "nvidia-cublas": ("libcublas.so.13", "libcublasLt.so.13")}}
TIER = {13: "cuda13"}
XZ_PRESET = 6
Echo = Callable[[str], None]


@dataclass(frozen=True)
class RuntimePack:
    path: Path
    version: str          # "<cublas>-<cudart>", e.g. 13.0.2.14-13.0.96: the folder is cuda13-<version>
    size: int
    sha256: str
    unpacked: int


def pack_name(major: int, arch: str) -> str:
    return f"dx-cuda{major}-runtime-linux-{arch}.tar.xz"


def pinned_wheels(major: int) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (version, allowed SHA-256s), from the tier's toolkit pins (one source of truth)."""
    from dxmatrix.recipes import get_tier

    if major not in PACK_WHEELS:
        raise ConfigurationError(f"--cuda {major}: DX makes runtime packs for CUDA {', '.join(map(str, PACK_WHEELS))}",
                                 hint="use --cuda 13")
    pins = {}
    for spec, hashes in get_tier(TIER[major]).toolkit_wheels.items():
        name, version = spec.split("==", 1)
        if name in PACK_WHEELS[major]:
            pins[name] = (version, tuple(hashes))
    missing = sorted(set(PACK_WHEELS[major]) - set(pins))
    if missing:
        raise ConfigurationError(f"recipes/tiers.toml [{TIER[major]}].toolkit_wheels pins none of {missing}",
                                 hint="pin them there; the runtime pack is made from the same wheels")
    return pins


#: pip's --platform tags for a pack made for another arch (the wheels are manylinux, any Python).
PLATFORMS = {"x86_64": ("manylinux_2_27_x86_64", "manylinux_2_17_x86_64"),
             "arm64": ("manylinux_2_27_aarch64", "manylinux_2_17_aarch64")}


def fetch_wheels(major: int, cache: Path, log: Path, arch: str) -> dict[str, Path]:
    """The pinned wheels for ``arch``, from the DX download cache or pip (``--require-hashes``)."""
    pins = pinned_wheels(major)
    folder = cache / "downloads" / f"cuda{major}-runtime-wheels-{arch}"
    found = _cached_wheels(folder, pins)
    if len(found) == len(pins):
        return found
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wheels-", dir=folder.parent))
    try:
        req = tmp / "requirements.txt"
        req.write_text("".join(f"{n}=={v} " + " ".join(f"--hash=sha256:{h}" for h in hs) + "\n"
                               for n, (v, hs) in sorted(pins.items())))
        platform = [a for tag in PLATFORMS[arch] for a in ("--platform", tag)]
        run_cmd([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--require-hashes",
                 "--disable-pip-version-check", *platform, "-d", tmp / "w", "-r", req], log=log,
                what=f"pip download of the CUDA {major} runtime wheels")
        folder.mkdir(exist_ok=True)
        for whl in (tmp / "w").glob("*.whl"):
            os.replace(whl, folder / whl.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = _cached_wheels(folder, pins)
    if len(found) != len(pins):
        raise IntegrityError(f"pip did not provide every pinned wheel ({sorted(pins)}); see {log}")
    return found


def _cached_wheels(folder: Path, pins: dict[str, tuple[str, tuple[str, ...]]]) -> dict[str, Path]:
    out = {}
    for whl in sorted(folder.glob("*.whl")) if folder.is_dir() else []:
        name = whl.name.split("-", 1)[0].replace("_", "-")
        if name in pins and whl.name.split("-")[1] == pins[name][0] and sha256_file(whl) in pins[name][1]:
            out[name] = whl
    return out


def _epoch() -> int:
    from dxbuild.engine.plan import SOURCE_DATE_EPOCH

    return int(os.environ.get("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH))


def pack_members(major: int, wheels: dict[str, Path], versions: dict[str, str]) -> dict[str, bytes]:
    """``{path inside the pack: bytes}``: lib/<SONAME>, licenses/<wheel>-License.txt, dx-runtime.json."""
    members: dict[str, bytes] = {}
    for name, whl in sorted(wheels.items()):  # the wheels' own files, unchanged (no host library enters)
        with zipfile.ZipFile(whl) as z:
            names = z.namelist()
            for lib in PACK_WHEELS[major][name]:
                member = f"nvidia/cu{major}/lib/{lib}"
                if member not in names:
                    raise MalformedInputError(f"{whl.name} lacks {member}")
                members[f"lib/{lib}"] = z.read(member)
            licences = [n for n in names if re.search(r"\.dist-info/(licenses/)?License\.txt$", n, re.I)]
            if not licences:
                raise MalformedInputError(f"{whl.name} carries no License.txt", hint="the pack must carry it")
            members[f"licenses/{name}-License.txt"] = z.read(licences[0])
    meta = {"dx_runtime_pack": 1, "cuda_major": major, "wheels": versions,
            "files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(members.items())}}
    members["dx-runtime.json"] = (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode()
    return members


def write_tar_xz(dest: Path, top: str, members: dict[str, bytes]) -> None:
    """A deterministic ``.tar.xz`` with everything under ``top/`` (written to a temp name, renamed)."""
    epoch = _epoch()
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        with lzma.open(tmp, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET) as xz, \
                tarfile.open(fileobj=xz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            dirs = sorted({top} | {f"{top}/{m.rsplit('/', 1)[0]}" for m in members if "/" in m})
            for d in dirs:
                info = tarfile.TarInfo(d)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
                tar.addfile(info)
            for name in sorted(members):
                info = tarfile.TarInfo(f"{top}/{name}")
                data = members[name]
                info.size, info.mtime = len(data), epoch
                info.mode = 0o755 if name.startswith("lib/") else 0o644
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def build_runtime_pack(major: int, out_dir: Path, *, arch: str | None = None, cache: Path | None = None,
                       echo: Echo | None = None) -> RuntimePack:
    """Fetch the pinned wheels (cached), write the pack and its facts file into ``out_dir``."""
    from dxbuild.toolchains.host import HOST_ARCH
    from dxmatrix.cell import normalize_arch

    arch = normalize_arch(arch) if arch else HOST_ARCH
    if arch not in PLATFORMS:
        raise ConfigurationError(f"--arch {arch}: runtime packs are made for {', '.join(PLATFORMS)}")
    cache = cache or default_cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    log = cache / "downloads" / f"cuda{major}-runtime-wheels.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    wheels = fetch_wheels(major, cache, log, arch)
    pins = pinned_wheels(major)
    versions = {n: pins[n][0] for n in sorted(pins)}
    version = "-".join(versions[n] for n in ("nvidia-cublas", "nvidia-cuda-runtime"))
    if echo:
        echo(f"runtime pack: cuBLAS {versions['nvidia-cublas']}, cudart {versions['nvidia-cuda-runtime']} "
             f"(xz -{XZ_PRESET}, a minute or two for 600 MB)")
    members = pack_members(major, wheels, versions)
    dest = out_dir / pack_name(major, arch)
    write_tar_xz(dest, f"cuda{major}-{version}", members)
    pack = RuntimePack(dest, version, dest.stat().st_size, sha256_file(dest), sum(map(len, members.values())))
    write_pack_facts(pack, major, arch)
    return pack


def write_pack_facts(pack: RuntimePack, major: int, arch: str) -> Path:
    """``<pack>.json``: the facts file ``dxbuild manifest`` gathers (kind ``runtime-pack``)."""
    from dx import __version__ as dx_version
    from dxbuild.release.manifest import FACTS_FORMAT, write_facts
    from dxmatrix.recipes import get_tier

    tier = get_tier(TIER[major])
    return write_facts(pack.path, {
        "dx_facts": FACTS_FORMAT, "kind": "runtime-pack", "file": pack.path.name, "tier": tier.name,
        "os": "linux", "arch": arch, "dx_version": dx_version, "size": pack.size, "sha256": pack.sha256,
        "engine": {"key": None, "llama_cpp_commit": None, "source": None, "source_sha256": None, "patches": []},
        "model": None,
        "requirements": {"min_nvidia_driver": tier.runtime.min_nvidia_driver, "needs": list(tier.runtime.needs),
                         "cpu": {"minimum": "-", "variants": []}},
        "runtime_pack": {"version": pack.version, "cuda_major": major, "unpacked": pack.unpacked,
                         "folder": f"cuda{major}-{pack.version}"},
    })
