"""dxbuild.bundle.nuitka planning: Nuitka options, engine file selection, cache key (no compile)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dxbuild.bundle import nuitka as bundle
from dxverify.errors import ConfigurationError


def _engine(tmp_path: Path) -> Path:
    e = tmp_path / "engine"
    (e / "bin").mkdir(parents=True)
    (e / "lib").mkdir()
    (e / "bin" / "llama-server").write_bytes(b"\x7fELF server")
    (e / "bin" / "llama-bench").write_bytes(b"\x7fELF bench")
    (e / "bin" / "ggml-rpc-server").write_bytes(b"\x7fELF rpc")
    (e / "bin" / "libggml-cpu-haswell.so").write_bytes(b"haswell")
    (e / "engine.json").write_text("{}")
    (e / "lib" / "libggml-base.so.0.25.3").write_bytes(b"base")
    os.symlink("libggml-base.so.0.25.3", e / "lib" / "libggml-base.so.0")
    os.symlink("libggml-base.so.0", e / "lib" / "libggml-base.so")
    (e / "lib" / "libmtmd.so").write_bytes(b"unversioned")
    (e / "lib" / "libllama-bench-impl.so").write_bytes(b"bench only")
    return e


def test_engine_files_carry_each_library_once_under_its_soname(tmp_path: Path) -> None:
    e = _engine(tmp_path)
    files = {dest: src for src, dest in bundle.engine_files(e)}
    assert set(files) == {
        "engine/bin/llama-server", "engine/bin/ggml-rpc-server", "engine/engine.json", "engine/bin/libggml-cpu-haswell.so",
        "engine/lib/libggml-base.so.0", "engine/lib/libmtmd.so",
    }
    assert files["engine/lib/libggml-base.so.0"] == e / "lib" / "libggml-base.so.0.25.3"
    assert not any("llama-bench" in d for d in files)  # not needed to serve


def test_engine_without_server_is_a_clear_error(tmp_path: Path) -> None:
    e = _engine(tmp_path)
    (e / "bin" / "llama-server").unlink()
    with pytest.raises(ConfigurationError, match="lacks bin/llama-server"):
        bundle.engine_files(e)


def test_nuitka_options_are_onefile_cached_archive_with_engine_data(tmp_path: Path) -> None:
    e = _engine(tmp_path)
    opts = bundle.nuitka_options(stage=tmp_path / "s", out_dir=tmp_path / "o", output_name="dx",
                                 engine=bundle.engine_files(e), unpack_spec="{CACHE_DIR}/dx/run/x")
    assert "--mode=onefile" in opts
    assert "--onefile-cache-mode=cached" in opts
    assert "--onefile-as-archive" in opts
    assert "--onefile-tempdir-spec={CACHE_DIR}/dx/run/x" in opts
    assert f"--include-data-files={e / 'bin' / 'llama-server'}=engine/bin/llama-server" in opts
    assert "--nofollow-import-to=dxbuild" in opts
    assert "--include-module=_json" in opts  # the C JSON parser, which Nuitka's anti-bloat would leave out
    assert opts[-1] == str(tmp_path / "s" / "dx_main.py")


def test_runtime_sources_hold_the_runtime_and_not_the_builder() -> None:
    src = bundle.runtime_sources()
    assert "dx/cli/__init__.py" in src and "dx/server/app.py" in src and "dxverify/trailer.py" in src
    assert not any(k.startswith("dxbuild/") for k in src)


def test_bundle_key_changes_with_every_input(tmp_path: Path) -> None:
    e = bundle.engine_files(_engine(tmp_path))
    src = {"dx/cli.py": b"a"}
    base = bundle.bundle_key("k1", "cpu", src, e, "0.1.0")
    assert base == bundle.bundle_key("k1", "cpu", dict(src), e, "0.1.0")
    assert base != bundle.bundle_key("k2", "cpu", src, e, "0.1.0")
    assert base != bundle.bundle_key("k1", "cuda13", src, e, "0.1.0")
    assert base != bundle.bundle_key("k1", "cpu", {"dx/cli.py": b"b"}, e, "0.1.0")
    assert base != bundle.bundle_key("k1", "cpu", src, e[:-1], "0.1.0")
    assert base != bundle.bundle_key("k1", "cpu", src, e, "0.2.0")


def test_missing_zstandard_fails_the_bundle_step_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from dxverify.errors import ToolError

    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard → ImportError
    with pytest.raises(ToolError, match="zstandard"):
        bundle.check_build_deps()
