"""install.sh and the cuda13 runtime pack, under dash, bash and busybox ash, from a loopback release.

The release is made the real way (dxbuild.release.runtime_pack writes the pack and its
facts file, dxbuild.steps.manifest the manifest, dxbuild.steps.sign SHA256SUMS and
the Ed25519 signatures); only the pack's libraries are stand-ins (a few bytes
each: install.sh never loads them) and the NVIDIA driver is a fake (an
``nvidia-smi`` shim / a fake ``/proc/driver/nvidia/version``, conftest.Machine).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from support.dist_harness import SHELLS, Release, finish_release, make_release, render_to, run_install

from dxbuild.release.manifest import parse_manifest_text
from dxbuild.release.runtime_pack import RuntimePack, pack_name, write_pack_facts, write_tar_xz

ALL_SHELLS = list(SHELLS)
VERSION = "13.0.2.14-13.0.96"
FOLDER = f"cuda13-{VERSION}"
PACK = pack_name(13, "x86_64")
CELLS = [("cpu", "linux", "x86_64", None), ("cuda13", "linux", "x86_64", 580)]
LIBS = ("lib/libcudart.so.13", "lib/libcublas.so.13", "lib/libcublasLt.so.13")


def add_pack(directory: Path, members: dict[str, bytes] | None = None) -> None:
    """A stand-in runtime pack written by the real writer, with its facts file."""
    if members is None:
        members = {**{lib: f"stand-in {lib}".encode() for lib in LIBS},
                   "licenses/nvidia-cublas-License.txt": b"NVIDIA licence (stand-in)",
                   "dx-runtime.json": b'{"dx_runtime_pack": 1}\n'}
    dest = directory / PACK
    write_tar_xz(dest, FOLDER, members)
    data = dest.read_bytes()
    write_pack_facts(RuntimePack(dest, VERSION, len(data), hashlib.sha256(data).hexdigest(),
                                 sum(map(len, members.values()))), 13, "x86_64")


def make_pack_release(directory: Path, key_dir: Path, members: dict[str, bytes] | None = None) -> Release:
    rel = make_release(directory, key_dir, cells=CELLS)
    add_pack(directory, members)
    finish_release(directory, key_dir)  # manifest again (now with the pack), SHA256SUMS, signatures
    return rel


@pytest.fixture(scope="module")
def pack_release(tmp_path_factory, release_keys) -> Release:
    return make_pack_release(tmp_path_factory.mktemp("packrel") / "release", release_keys)


def runtime_dir(m) -> Path:
    return m.base / "home" / ".local" / "share" / "dx" / "runtime"


def leftovers(m) -> list[Path]:
    """Staging folders or partial files anywhere under the machine's home."""
    return [p for p in (m.base / "home").rglob("*") if ".dx-install." in p.name or p.name.endswith(".part")]


def install(shell, rel, serve, tmp_path, m, *args):
    server = serve(rel)
    script = render_to(tmp_path / f"install-{len(list(tmp_path.glob('install-*')))}.sh", server.url, rel.public_key)
    return run_install(shell, script, m, "--prefix", str(m.base / "prefix"), *args), server


def test_manifest_lists_the_pack(pack_release):
    doc = parse_manifest_text((pack_release.dir / "manifest.txt").read_text())
    (pack,) = doc["runtime_packs"]
    assert (pack["tier"], pack["os"], pack["arch"], pack["min_nvidia_driver"], pack["file"], pack["version"]) == (
        "cuda13", "linux", "x86_64", 580, PACK, VERSION)
    assert pack["sha256"] == pack_release.sha256(PACK)
    sums = (pack_release.dir / "SHA256SUMS").read_text()
    assert f"{pack_release.sha256(PACK)}  {PACK}\n" in sums
    assert (pack_release.dir / f"{PACK}.sig").stat().st_size == 64, "signed like every release file"
    assert {a["file"] for a in doc["artifacts"]} == {"dx-cpu-linux-x86_64", "dx-cuda13-linux-x86_64"}


@pytest.mark.parametrize("shell", ALL_SHELLS)
def test_driver_580_installs_the_pack_then_reuses_it(shell, pack_release, serve, tmp_path, machine):
    m = machine(nvidia_smi="580.65.06")
    r, server = install(shell, pack_release, serve, tmp_path, m)
    assert r.rc == 0, r.text
    dest = runtime_dir(m) / FOLDER
    for lib in LIBS:
        assert (dest / lib).read_bytes() == f"stand-in {lib}".encode()
    assert f"installed the cuda13 runtime pack (cuBLAS, cudart) into {dest}" in r.out
    assert (m.base / "prefix/bin/dx").read_bytes() == (pack_release.dir / "dx-cuda13-linux-x86_64").read_bytes()
    assert sorted(p.name for p in runtime_dir(m).iterdir()) == [FOLDER], "nothing but the pack's folder"
    assert not leftovers(m) and not m.leftover_temp_files()
    # a second install (another executable, or the same again) reuses it without downloading it
    r2, server2 = install(shell, pack_release, serve, tmp_path, m)
    assert r2.rc == 0, r2.text
    assert f"runtime pack: {dest} is already installed (reused)" in r2.out
    assert not any(PACK in path for path, _ in server2.requests), server2.requests
    assert any(PACK in path for path, _ in server.requests)


@pytest.mark.parametrize("shell", ALL_SHELLS)
def test_cpu_only_machine_never_gets_the_pack(shell, pack_release, serve, tmp_path, machine):
    m = machine()  # no nvidia-smi, no /proc/driver/nvidia
    r, server = install(shell, pack_release, serve, tmp_path, m)
    assert r.rc == 0, r.text
    assert "tier: cpu" in r.out and "runtime pack" not in r.out
    r, server = install(shell, pack_release, serve, tmp_path, m, "--tier", "cuda13")
    assert r.rc == 0, r.text
    assert "runtime pack: not installed — no NVIDIA driver on this machine" in r.out
    assert not runtime_dir(m).exists()
    assert not any(PACK in path for path, _ in server.requests)


def test_old_driver_skips_the_pack_and_proc_driver_counts(pack_release, serve, tmp_path, machine):
    m = machine(nvidia_smi="550.54.15")
    r, _ = install("dash", pack_release, serve, tmp_path, m, "--tier", "cuda13")
    assert r.rc == 0, r.text
    assert "runtime pack: not installed — NVIDIA driver 550.54.15 is older than the 580 it needs" in r.out
    assert not runtime_dir(m).exists()
    m = machine(nvidia_proc="580.95.05")  # the kernel module's version file, no nvidia-smi
    r, _ = install("dash", pack_release, serve, tmp_path, m)
    assert r.rc == 0, r.text
    assert (runtime_dir(m) / FOLDER / "lib/libcublasLt.so.13").is_file()


def test_dry_run_says_it_would_install_the_pack(pack_release, serve, tmp_path, machine):
    m = machine(nvidia_smi="580.65.06")
    r, server = install("bash", pack_release, serve, tmp_path, m, "--dry-run")
    assert r.rc == 0, r.text
    assert re.search(rf"would install the cuda13 runtime pack {PACK} \(\d+ bytes\) into {runtime_dir(m) / FOLDER}",
                     r.out)
    assert not runtime_dir(m).exists() and not any(PACK in p for p, _ in server.requests)


def test_xdg_data_home_moves_the_shared_folder(pack_release, serve, tmp_path, machine):
    m = machine(nvidia_smi="580.65.06")
    data = m.base / "home" / "data"
    r, _ = install("busybox", pack_release, serve, tmp_path, m)  # first with the default
    assert r.rc == 0
    server = serve(pack_release)
    script = render_to(tmp_path / "xdg.sh", server.url, pack_release.public_key)
    r = run_install("busybox", script, m, "--prefix", str(m.base / "prefix"), env={"XDG_DATA_HOME": str(data)})
    assert r.rc == 0, r.text
    assert (data / "dx/runtime" / FOLDER / "lib/libcudart.so.13").is_file()


def _flip_pack_byte(rel: Release) -> None:
    p = rel.dir / PACK
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def _resummed_without_signing(rel: Release) -> None:
    """The pack altered and SHA256SUMS rewritten to match it, but not re-signed: the signature fails."""
    _flip_pack_byte(rel)
    sums = rel.dir / "SHA256SUMS"
    new = hashlib.sha256((rel.dir / PACK).read_bytes()).hexdigest()
    sums.write_text(re.sub(rf"^[0-9a-f]{{64}}(  {re.escape(PACK)})$", new + r"\1", sums.read_text(), flags=re.M))


@pytest.mark.parametrize("shell", ALL_SHELLS)
@pytest.mark.parametrize(("tamper", "message"), [
    (_flip_pack_byte, f"SHA-256 mismatch for {PACK}"),
    (_resummed_without_signing, "signature check FAILED for SHA256SUMS"),
], ids=["checksum", "signature"])
def test_tampered_pack_is_refused_and_nothing_is_installed(shell, tamper, message, pack_release, serve, tmp_path,
                                                           machine):
    rel = pack_release.copy(tmp_path / "tampered")
    tamper(rel)
    m = machine(nvidia_smi="580.65.06")
    r, _ = install(shell, rel, serve, tmp_path, m)
    assert r.rc == 1, r.text
    errors = [x for x in r.err.splitlines() if "error:" in x]
    assert len(errors) == 1 and message in errors[0], r.text
    assert not (m.base / "prefix").exists(), "the executable is not installed either"
    assert not runtime_dir(m).exists() or not any(runtime_dir(m).iterdir())
    assert not leftovers(m) and not m.leftover_temp_files()


@pytest.mark.parametrize("shell", ALL_SHELLS)
def test_a_pack_without_its_libraries_leaves_nothing_half_written(shell, tmp_path_factory, release_keys, serve,
                                                                  tmp_path, machine):
    """Signed and listed, but lacking cuBLASLt: unpacked beside its place, refused, the stage removed."""
    rel = make_pack_release(tmp_path_factory.mktemp("broken") / "release", release_keys,
                            {"lib/libcudart.so.13": b"x", "lib/libcublas.so.13": b"x", "dx-runtime.json": b"{}"})
    m = machine(nvidia_smi="580.65.06")
    r, _ = install(shell, rel, serve, tmp_path, m)
    assert r.rc == 1, r.text
    assert f"does not hold {FOLDER}/lib/libcublasLt.so.13" in r.err
    assert not (runtime_dir(m) / FOLDER).exists()
    assert list(runtime_dir(m).iterdir()) == [], "no staging folder left"
    assert not (m.base / "prefix").exists()
