"""Reproducibility: differences between two builds are found and explained (real gcc, real ELF files)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support.tools import need

from dxbuild.release.reproducibility import compare_trees, repro_engine

SRC = r'''
#include <stdio.h>
int main(void) { printf("%s %s %s\n", __FILE__, __DATE__, "dx"); return 0; }
'''

def _build(root: Path, *, prefix_map: bool, epoch: str = "315532800") -> Path:
    src = root / "src"
    src.mkdir(parents=True)
    (src / "main.c").write_text(SRC)
    out = root / "out"
    out.mkdir()
    flags = [f"-ffile-prefix-map={root}=/dx"] if prefix_map else []
    env = dict(os.environ, SOURCE_DATE_EPOCH=epoch, LC_ALL="C")
    subprocess.run([need("gcc", "cc", package="gcc"), "-O2", *flags, str(src / "main.c"), "-o", str(out / "prog")], check=True, env=env,
                   cwd=root)
    (out / "info.json").write_text(json.dumps({"tier": "cpu", "build_seconds": 1.0}))
    return out


def test_prefix_map_and_epoch_make_identical_binaries(tmp_path: Path) -> None:
    a = _build(tmp_path / "a", prefix_map=True)
    b = _build(tmp_path / "b", prefix_map=True)
    cmp = compare_trees(a, b)
    assert cmp.reproducible, [d.line() for d in cmp.different]
    assert cmp.identical == ["info.json", "prog"]


def test_embedded_build_path_is_named(tmp_path: Path) -> None:
    a = _build(tmp_path / "a", prefix_map=False)
    b = _build(tmp_path / "b", prefix_map=False)
    cmp = compare_trees(a, b, hints=[str(tmp_path / "a").encode(), str(tmp_path / "b").encode()])
    [d] = cmp.different
    assert d.path == "prog"
    assert any(c.startswith(f"embedded path: contains {tmp_path / 'a'}") for c in d.causes), d.causes
    assert any(c.startswith("ELF sections differ: ") and ".rodata" in c for c in d.causes), d.causes


def test_timestamp_is_named(tmp_path: Path) -> None:
    a = _build(tmp_path / "a", prefix_map=True, epoch="315532800")
    b = _build(tmp_path / "b", prefix_map=True, epoch="1700000000")
    [d] = compare_trees(a, b).different
    assert "timestamp: __DATE__-like text differs" in d.causes


def test_recorded_values_and_missing_files(tmp_path: Path) -> None:
    for n, secs in (("a", 1.0), ("b", 2.0)):
        (tmp_path / n).mkdir()
        (tmp_path / n / "engine.json").write_text(json.dumps({"key": "k", "build_seconds": secs}))
    (tmp_path / "a" / "only-a").write_text("x")
    lines = [d.line() for d in compare_trees(tmp_path / "a", tmp_path / "b").different]
    assert lines == ["engine.json: content (recorded value: build_seconds (describes the build run))",
                     "only-a: missing (only in first build)"]


@pytest.mark.integration
@pytest.mark.repro
def test_engine_build_is_reproducible(tmp_path: Path) -> None:
    """Two cold builds (ccache off) in two fresh caches, same flags as the cpu tier but one CPU
    variant and the smaller llama-bench target (libllama, libggml-base, ggml-cpu, common are the
    same objects llama-server links). Several minutes on 2 cores. Every binary must be
    byte-identical; engine.json may differ only in what records the build run (build_seconds).
    """
    r = repro_engine("cpu", workdir=tmp_path, targets=("llama-bench",),
                     cmake_overrides={"GGML_CPU_ALL_VARIANTS": "OFF"})
    binaries = [f for f in r["identical"] if f.startswith(("bin/", "lib/"))]
    assert "bin/llama-bench" in binaries and any(f.startswith("lib/libllama") for f in binaries), r
    unexplained = [d for d in r["different"]
                   if not (d["path"] == "engine.json" and d["causes"] and
                           all(c.startswith("recorded value") for c in d["causes"]))]
    assert not unexplained, unexplained
