"""Size report of a two-model executable: both GGUF sizes, and the file against their sum."""

from __future__ import annotations

import os
from pathlib import Path

from test_size_report import _files, fake_onefile

from dxbuild.steps import size_report
from dxverify.trailer import write_executable


def test_both_ggufs_are_shown_and_everything_adds_up(tmp_path: Path) -> None:
    runtime = fake_onefile(tmp_path / "runtime", _files(10_000))
    model, draft = tmp_path / "m.gguf", tmp_path / "d.gguf"
    model.write_bytes(b"GGUF" + os.urandom(300_000))
    draft.write_bytes(b"GGUF" + os.urandom(100_000))
    exe = tmp_path / "dx-m-cpu-linux-x86_64"
    with open(exe, "wb") as f:
        write_executable(runtime, model, f, {"model": "m", "source": "t", "tier": "cpu", "dx_version": "0",
                                             "llama_cpp_commit": "c"}, draft=draft)
    m = size_report.measure(exe, runtime_size=runtime.stat().st_size)
    assert sum(m["components"].values()) == exe.stat().st_size
    assert m["ggufs"] == [{"role": "model", "bytes": 300_004}, {"role": "draft", "bytes": 100_004}]
    assert m["components"]["model"] == 400_008
    # padding to the draft's boundary + table + metadata + trailer
    assert 0 < m["components"]["trailer"] < 2 * 65536 + 4096
    _, paths = size_report.size_report([(exe, "cpu", 40, runtime.stat().st_size)], tmp_path / "out")
    md = paths[1].read_text()
    assert "Embedded GGUFs: model 0.3 MB + draft 0.1 MB; the executable is" in md, md
