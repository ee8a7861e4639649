"""Size report: exact split from the onefile archive, budget verdict, growth named when over budget.

Unit tests use ``fake_onefile``: a stand-in for a Nuitka onefile written in
Nuitka's archive layout (real zstd frames, real headers) behind a fake
bootstrap, because compiling a real one takes minutes. The integration test
measures the real minted SmolLM2 executable.
"""

from __future__ import annotations

import json
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest
import zstandard

from dxbuild.bundle.payload import read_payload
from dxbuild.steps import size_report
from dxverify.errors import ConfigurationError, MalformedInputError
from dxverify.trailer import write_executable

BOOTSTRAP = b"\x7fFAKE-BOOTSTRAP" + bytes(5000)


def fake_onefile(path: Path, files: dict[str, bytes]) -> Path:
    """A file laid out like a Nuitka --onefile-as-archive binary (bootstrap + KAY payload)."""
    out = bytearray(BOOTSTRAP)
    out += b"KAY"
    for name, data in files.items():
        comp = zstandard.ZstdCompressor(level=3).compress(data)
        out += name.encode() + b"\0" + bytes([1]) + struct.pack("<QII", len(data), zlib.crc32(data) or 1, len(comp))
        out += comp
    out += b"\0" + b"\x00" * 8  # terminator, then the size field Nuitka appends
    path.write_bytes(bytes(out))
    return path


def _files(backend_size: int) -> dict[str, bytes]:
    import os

    return {
        "dx": os.urandom(200_000),
        "_ssl.so": os.urandom(30_000),
        "engine/bin/llama-server": os.urandom(120_000),
        "engine/lib/libllama.so": os.urandom(50_000),
        "engine/lib/libggml-base.so": os.urandom(20_000),
        "engine/lib/libggml-cpu-haswell.so": os.urandom(backend_size),
        "engine/engine.json": b"{}",
    }


def test_payload_parser_reads_every_entry(tmp_path: Path) -> None:
    exe = fake_onefile(tmp_path / "dx", _files(10_000))
    p = read_payload(exe)
    assert [e.name for e in p.entries][:2] == ["dx", "_ssl.so"]
    assert {e.name: e.size for e in p.entries}["engine/lib/libggml-cpu-haswell.so"] == 10_000
    assert p.start == len(BOOTSTRAP)


def test_no_payload_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"\x7fELF" + b"KAY" + b"junk" * 100)
    with pytest.raises(MalformedInputError, match="no Nuitka onefile archive payload"):
        read_payload(tmp_path / "plain")


def test_components_add_up_with_model(tmp_path: Path, smollm2_gguf: Path) -> None:
    runtime = fake_onefile(tmp_path / "runtime", _files(10_000))
    exe = tmp_path / "dx-smollm2-cpu-linux-x86_64"
    with open(exe, "wb") as f:
        write_executable(runtime, smollm2_gguf, f, {"model": "smollm2", "source": "t", "tier": "cpu",
                                                     "dx_version": "0", "llama_cpp_commit": "c"})
    m = size_report.measure(exe, runtime_size=runtime.stat().st_size)
    c = m["components"]
    assert sum(c.values()) == exe.stat().st_size
    assert c["model"] == smollm2_gguf.stat().st_size
    assert m["unpacked"] == {"engine": 190_002, "backend": 10_000, "python": 230_000}
    assert 0 < c["nuitka"] < len(BOOTSTRAP) + 400
    assert 0 < c["trailer"] < 65536 + 4096


def test_report_files_written(tmp_path: Path) -> None:
    exe = fake_onefile(tmp_path / "dx-cpu-linux-x86_64", _files(10_000))
    _, paths = size_report.size_report([(exe, "cpu", 40, None)], tmp_path / "out")
    assert [p.name for p in paths] == ["size-report.json", "size-report.md", "size-report.svg"]
    assert json.loads(paths[0].read_text())["artifacts"][0]["budget"]["ok"] is True
    assert "within budget" in paths[1].read_text()
    svg = ET.fromstring(paths[2].read_text())
    assert svg.tag.endswith("svg") and len(svg.findall("{http://www.w3.org/2000/svg}rect")) >= 6


def test_over_budget_names_what_grew(tmp_path: Path) -> None:
    exe = fake_onefile(tmp_path / "dx-cpu-linux-x86_64", _files(100_000))
    size_report.size_report([(exe, "cpu", 1, None)], tmp_path / "before")
    fake_onefile(exe, _files(900_000))  # the CPU backend grew by 0.8 MB
    with pytest.raises(ConfigurationError) as e:
        size_report.size_report([(exe, "cpu", 1, None)], tmp_path / "after",
                                previous=tmp_path / "before" / "size-report.json")
    msg = str(e.value)
    assert "over the tier budget of 1 MB" in msg
    assert "backend +0.80 MB" in msg and "libggml-cpu-haswell.so" in msg
    # the report is still written, saying so
    doc = json.loads((tmp_path / "after" / "size-report.json").read_text())
    assert doc["artifacts"][0]["budget"]["ok"] is False
    assert "OVER BUDGET" in (tmp_path / "after" / "size-report.md").read_text()


def test_over_budget_without_previous_names_largest_part(tmp_path: Path) -> None:
    exe = fake_onefile(tmp_path / "dx-cpu-linux-x86_64", _files(1_500_000))
    with pytest.raises(ConfigurationError, match="largest part: backend libraries"):
        size_report.size_report([(exe, "cpu", 1, None)], tmp_path / "out")


def test_previous_report_must_be_one(tmp_path: Path) -> None:
    exe = fake_onefile(tmp_path / "dx-cpu-linux-x86_64", _files(1000))
    (tmp_path / "prev.json").write_text('{"report": "bench", "format": 1}')
    with pytest.raises(ConfigurationError, match="is not a DX size report"):
        size_report.size_report([(exe, "cpu", 40, None)], tmp_path / "out", previous=tmp_path / "prev.json")


@pytest.mark.integration
def test_size_report_of_minted_smollm2(minted_smollm2: Path, tmp_path: Path) -> None:
    """The real minted executable (Nuitka onefile + engine + model) splits exactly."""
    exe = minted_smollm2
    doc, _ = size_report.size_report([(exe, "cpu", 40, None)], tmp_path)
    a = doc["artifacts"][0]
    assert sum(a["components"].values()) == exe.stat().st_size
    for c in ("engine", "backend", "python", "nuitka", "model"):
        assert a["components"][c] > 0, c
    assert a["budget"]["ok"] is True
    names = {f["name"] for f in a["largest_files"]}
    assert any("llama-server" in n for n in names)  # the stub binary or libllama-server-impl.so
