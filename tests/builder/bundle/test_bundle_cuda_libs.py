"""Thin and fat CUDA bundles (dxbuild.bundle.nuitka): which engine files travel, and the cache key (no compile)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dxbuild.bundle import nuitka as bundle
from dxverify.errors import ConfigurationError


def _cuda_engine(tmp_path: Path) -> Path:
    """A cuda engine's layout: libggml-cuda next to llama-server, cuBLAS/cudart (with their links) in lib/."""
    e = tmp_path / "engine"
    (e / "bin").mkdir(parents=True)
    (e / "lib").mkdir()
    for name in ("llama-server", "ggml-rpc-server", "libggml-cuda.so", "libggml-cpu-haswell.so"):
        (e / "bin" / name).write_bytes(b"\x7fELF " + name.encode())
    (e / "engine.json").write_text("{}")
    (e / "lib" / "libllama.so.0").write_bytes(b"llama")
    for real, links in (("libcudart.so.13.0.96", ("libcudart.so.13", "libcudart.so")),
                        ("libcublas.so.13.0.2.14", ("libcublas.so.13", "libcublas.so")),
                        ("libcublasLt.so.13.0.2.14", ("libcublasLt.so.13", "libcublasLt.so"))):
        (e / "lib" / real).write_bytes(b"x" * 1000)
        os.symlink(real, e / "lib" / links[0])
        os.symlink(links[0], e / "lib" / links[1])
    return e


def test_thin_leaves_cuda_runtime_out_and_keeps_ggml_cuda(tmp_path: Path) -> None:
    e = _cuda_engine(tmp_path)
    fat = {dest for _, dest in bundle.engine_files(e, "fat")}
    thin = {dest for _, dest in bundle.engine_files(e, "thin")}
    assert {"engine/lib/libcublas.so.13", "engine/lib/libcublasLt.so.13", "engine/lib/libcudart.so.13"} <= fat
    assert fat - thin == {"engine/lib/libcublas.so.13", "engine/lib/libcublasLt.so.13", "engine/lib/libcudart.so.13"}
    assert "engine/bin/libggml-cuda.so" in thin and "engine/lib/libllama.so.0" in thin


def test_plan_defaults_to_thin_and_counts_what_is_left_out(tmp_path: Path) -> None:
    e = _cuda_engine(tmp_path)
    plan = bundle.cuda_libs_plan(e, None)
    assert plan is not None and plan["form"] == "thin"
    assert sorted(f["name"] for f in plan["runtime_libs"]) == [
        "libcublas.so.13.0.2.14", "libcublasLt.so.13.0.2.14", "libcudart.so.13.0.96"]
    assert sum(f["bytes"] for f in plan["runtime_libs"]) == 3000
    assert bundle.cuda_libs_plan(e, "fat")["form"] == "fat"
    with pytest.raises(ConfigurationError, match="not one of thin, fat"):
        bundle.cuda_libs_plan(e, "medium")


def test_plan_is_none_for_an_engine_without_cuda(tmp_path: Path) -> None:
    e = _cuda_engine(tmp_path)
    for p in (e / "lib").glob("libcu*"):
        p.unlink()
    assert bundle.cuda_libs_plan(e, "thin") is None


def test_thin_and_fat_are_two_cache_entries(tmp_path: Path) -> None:
    e = _cuda_engine(tmp_path)
    src = {"dx/cli.py": b"x"}
    keys = {form: bundle.bundle_key("k", "cuda13", src, bundle.engine_files(e, form), "0", form)
            for form in ("thin", "fat")}
    assert keys["thin"] != keys["fat"]
    assert bundle.bundle_key("k", "cpu", src, [], "0") == bundle.bundle_key("k", "cpu", src, [], "0", None)
