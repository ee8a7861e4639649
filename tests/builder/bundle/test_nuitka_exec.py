"""The onefile bootstrap patch (dxbuild.bundle.nuitka_exec): exec in place of fork + wait, cached mode only."""

from __future__ import annotations

from pathlib import Path

import pytest

from dxbuild.bundle import nuitka as bundle
from dxbuild.bundle import nuitka_exec


def _installed_bootstrap() -> str:
    import nuitka

    return (Path(nuitka.__file__).parent / "build" / "static_src" / "OnefileBootstrap.c").read_text()


def test_the_pinned_nuitka_bootstrap_is_patched_once_and_only_under_cached_mode_on_linux() -> None:
    src = _installed_bootstrap()
    out = nuitka_exec.patch_bootstrap(src)
    assert out != src
    assert out.count("pid_t pid = fork();") == 1  # still there: the temporary-folder mode needs its parent
    block = out[out.index("#if defined(__linux__) && !_NUITKA_ONEFILE_TEMP_BOOL"):]
    block = block[:block.index("#endif")]
    assert "pid_t pid = 0;" in block and 'unsetEnvironmentVariable("NUITKA_ONEFILE_PARENT")' in block
    assert "fork()" in block.split("#else", 1)[1]
    # pid 0 takes the child's branch: argv[0] = the onefile, execv of the unpacked program
    child = out[out.index("} else if (pid == 0) {"):]
    assert child.index("execv(fork_binary, argv);") < child.index("} else {")
    assert nuitka_exec.patch_bootstrap(out) == out  # idempotent


def test_a_bootstrap_without_the_anchor_stops_the_build() -> None:
    with pytest.raises(ValueError, match="expected the line"):
        nuitka_exec.patch_bootstrap("int main(void) { return 0; }\n")
    with pytest.raises(ValueError, match="2 times"):
        nuitka_exec.patch_bootstrap(nuitka_exec.ANCHOR * 2)


def test_the_bundle_uses_the_plugin_and_its_bytes_are_in_the_key(tmp_path: Path) -> None:
    opts = bundle.nuitka_options(stage=tmp_path / "s", out_dir=tmp_path / "o", output_name="dx", engine=[],
                                 unpack_spec="{CACHE_DIR}/dx/run/x")
    assert f"--user-plugin={bundle.EXEC_PLUGIN}" in opts
    assert "--onefile-cache-mode=cached" in opts  # the patch is only safe with a persistent unpack folder
    assert bundle.EXEC_PLUGIN.is_file()
    assert 'part("exec-plugin", EXEC_PLUGIN.read_bytes())' in Path(bundle.__file__).read_text()
