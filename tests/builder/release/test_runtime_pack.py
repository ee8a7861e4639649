"""The CUDA runtime pack (dxbuild.release.runtime_pack): members, deterministic .tar.xz, facts and manifest (no download).

The wheels here are small stand-ins laid out like NVIDIA's (``nvidia/cu13/lib/…``,
``*.dist-info/licenses/License.txt``); the real pack from the pinned wheels is made
by ``dxbuild runtime-pack --cuda 13`` (README) and checked by install.sh's tests.
"""

from __future__ import annotations

import json
import lzma
import tarfile
import zipfile
from pathlib import Path

import pytest
from support.schemas import validator

from dxbuild.release import runtime_pack
from dxbuild.release.manifest import build_manifest, gather_facts, manifest_text, parse_manifest_text
from dxverify.errors import ConfigurationError, MalformedInputError


def _wheel(path: Path, name: str, libs: dict[str, bytes], licence: bool = True) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for lib, data in libs.items():
            z.writestr(f"nvidia/cu13/lib/{lib}", data)
        z.writestr("nvidia/cu13/lib/libcudart_static.a", b"not carried")
        if licence:
            z.writestr(f"{name.replace('-', '_')}-13.0.dist-info/licenses/License.txt", f"{name} licence")
    return path


@pytest.fixture
def wheels(tmp_path: Path) -> dict[str, Path]:
    return {"nvidia-cuda-runtime": _wheel(tmp_path / "rt.whl", "nvidia-cuda-runtime", {"libcudart.so.13": b"rt"}),
            "nvidia-cublas": _wheel(tmp_path / "bl.whl", "nvidia-cublas",
                                    {"libcublas.so.13": b"blas", "libcublasLt.so.13": b"lt" * 1000,
                                     "libnvblas.so.13": b"not carried"})}


def test_members_are_the_three_libraries_their_licences_and_a_record(wheels: dict[str, Path]) -> None:
    members = runtime_pack.pack_members(13, wheels, {"nvidia-cublas": "13.0.2.14", "nvidia-cuda-runtime": "13.0.96"})
    assert sorted(members) == ["dx-runtime.json", "lib/libcublas.so.13", "lib/libcublasLt.so.13",
                               "lib/libcudart.so.13", "licenses/nvidia-cublas-License.txt",
                               "licenses/nvidia-cuda-runtime-License.txt"]
    meta = json.loads(members["dx-runtime.json"])
    assert meta["cuda_major"] == 13 and meta["wheels"]["nvidia-cublas"] == "13.0.2.14"
    assert set(meta["files"]) == set(members) - {"dx-runtime.json"}


def test_a_wheel_without_its_licence_is_refused(tmp_path: Path, wheels: dict[str, Path]) -> None:
    wheels["nvidia-cublas"] = _wheel(tmp_path / "x.whl", "nvidia-cublas",
                                     {"libcublas.so.13": b"", "libcublasLt.so.13": b""}, licence=False)
    with pytest.raises(MalformedInputError, match=r"carries no License\.txt"):
        runtime_pack.pack_members(13, wheels, {})


def test_tar_xz_is_deterministic_sorted_and_owned_by_nobody(tmp_path: Path, wheels: dict[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    members = runtime_pack.pack_members(13, wheels, {})
    a, b = tmp_path / "a.tar.xz", tmp_path / "b.tar.xz"
    runtime_pack.write_tar_xz(a, "cuda13-1.2", members)
    runtime_pack.write_tar_xz(b, "cuda13-1.2", dict(reversed(list(members.items()))))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[:6] == b"\xfd7zXZ\x00"
    with tarfile.open(a) as t:
        infos = t.getmembers()
    names = [i.name for i in infos]
    assert names[0] == "cuda13-1.2" and "cuda13-1.2/lib/libcublasLt.so.13" in names
    assert {(i.uid, i.gid, i.uname, i.gname, i.mtime) for i in infos} == {(0, 0, "", "", 315532800)}
    assert not list(tmp_path.glob(".*tmp*")), "written to a temporary name, renamed"
    assert lzma.decompress(a.read_bytes())  # a plain xz stream: `xz -dc | tar -xf -` reads it


def test_pins_come_from_the_tier_recipe() -> None:
    pins = runtime_pack.pinned_wheels(13)
    assert set(pins) == {"nvidia-cublas", "nvidia-cuda-runtime"}
    assert all(len(h) == 64 for _, hashes in pins.values() for h in hashes)
    with pytest.raises(ConfigurationError, match="--cuda 12"):
        runtime_pack.pinned_wheels(12)


def test_facts_and_manifest_entry_are_schema_valid(tmp_path: Path, wheels: dict[str, Path]) -> None:
    members = runtime_pack.pack_members(13, wheels, {})
    dest = tmp_path / runtime_pack.pack_name(13, "x86_64")
    runtime_pack.write_tar_xz(dest, "cuda13-13.0.2.14-13.0.96", members)
    from dxverify.hashing import sha256_file

    pack = runtime_pack.RuntimePack(dest, "13.0.2.14-13.0.96", dest.stat().st_size, sha256_file(dest), 9)
    facts_path = runtime_pack.write_pack_facts(pack, 13, "x86_64")
    validator("facts.schema.json").validate(json.loads(facts_path.read_text()))
    doc = build_manifest(tmp_path, gather_facts(tmp_path), "0.1.0")
    validator("manifest.schema.json").validate(doc)
    assert doc["artifacts"] == [] and doc["runtime_packs"][0]["version"] == "13.0.2.14-13.0.96"
    text = manifest_text(doc)
    assert text.splitlines()[1] == (f"runtime-pack cuda13 linux x86_64 580 {dest.name} {pack.size} {pack.sha256} "
                                    "13.0.2.14-13.0.96")
    assert parse_manifest_text(text)["runtime_packs"][0]["file"] == dest.name
