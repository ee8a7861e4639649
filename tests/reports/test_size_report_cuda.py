"""Size report of a cuda executable: thin and fat side by side, and the thin budget (no compile)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_size_report import _files, fake_onefile

from dxbuild.steps import size_report

LIBS = {"form": "thin", "runtime_libs": [{"name": "libcublasLt.so.13.0.2.14", "bytes": 539_533_072},
                                        {"name": "libcublas.so.13.0.2.14", "bytes": 54_440_120},
                                        {"name": "libcudart.so.13.0.96", "bytes": 704_288}]}


def _cuda_exe(tmp_path: Path) -> Path:
    files = {**_files(10_000), "engine/bin/libggml-cuda.so": os.urandom(300_000)}
    return fake_onefile(tmp_path / "dx-cuda13-linux-x86_64", files)


def test_thin_entry_shows_both_forms_and_is_within_budget(tmp_path: Path) -> None:
    exe = _cuda_exe(tmp_path)
    _, paths = size_report.size_report([(exe, "cuda13", 1200, None)], tmp_path / "out", cuda=LIBS,
                                       thin_budget_mb=120)
    entry = json.loads(paths[0].read_text())["artifacts"][0]
    c = entry["cuda_libs"]
    engine_dir = entry["unpacked"]["engine"] + entry["unpacked"]["backend"]
    assert c["form"] == "thin" and c["engine_dir_thin_bytes"] == engine_dir
    assert c["engine_dir_fat_bytes"] == engine_dir + 594_677_480
    assert c["executable_without_model_bytes"] == exe.stat().st_size and c["thin_ok"] is True
    md = paths[1].read_text()
    assert "CUDA libraries: **thin**" in md and "found at run time" in md and "thin budget 120 MB" in md


def test_thin_over_its_budget_fails_after_writing_the_report(tmp_path: Path) -> None:
    exe = _cuda_exe(tmp_path)
    with pytest.raises(size_report.OverBudget, match=r"thin executable without its model is .* over the tier's thin"):
        size_report.size_report([(exe, "cuda13", 1200, None)], tmp_path / "out", cuda=LIBS, thin_budget_mb=0.0001)
    assert (tmp_path / "out" / "size-report.json").is_file()


def test_fat_entry_subtracts_the_libraries_for_thin(tmp_path: Path) -> None:
    exe = _cuda_exe(tmp_path)
    doc, _ = size_report.size_report([(exe, "cuda13", 1200, None)], tmp_path / "out",
                                     cuda={**LIBS, "form": "fat"}, thin_budget_mb=120)
    c = doc["artifacts"][0]["cuda_libs"]
    assert c["engine_dir_fat_bytes"] - c["engine_dir_thin_bytes"] == 594_677_480
    assert c["thin_budget_mb"] is None and "thin_ok" not in c, "the thin budget is for thin executables"


def test_cpu_entry_has_no_cuda_part(tmp_path: Path) -> None:
    exe = fake_onefile(tmp_path / "dx-cpu-linux-x86_64", _files(10_000))
    doc, paths = size_report.size_report([(exe, "cpu", 40, None)], tmp_path / "out")
    assert "cuda_libs" not in doc["artifacts"][0] and "CUDA libraries" not in paths[1].read_text()
