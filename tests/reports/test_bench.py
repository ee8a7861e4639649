"""Benchmark: figures from the real minted executable; baseline regression; process-tree memory."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from support.waits import wait_until

from dxbuild.release import bench
from dxbuild.release.reports import write_report
from dxverify.errors import ConfigurationError, IntegrityError


def _doc(**dx: float) -> dict:
    base = {k: 1.0 for k in bench.FIGURES}
    base.update(dx)
    return {"report": "bench", "format": 1, "dx": base}


def test_baseline_regressions_named() -> None:
    before = _doc(decode_tps=150.0, warm_start_ready_s=0.5, peak_rss_mb=300.0)
    now = _doc(decode_tps=120.0, warm_start_ready_s=0.52, peak_rss_mb=400.0)
    lines = bench.compare_to_baseline(now, before, 0.1)
    assert len(lines) == 2
    assert lines[0].startswith("decode_tps 120 is 20% worse")
    assert lines[1].startswith("peak_rss_mb 400 is 33% worse")
    assert bench.compare_to_baseline(now, before, 0.5) == []


def test_tree_rss_counts_children() -> None:
    """A parent holding little and a child holding ~60 MB: the tree total includes the child."""
    child = "import time; b = bytearray(60 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); time.sleep(30)"
    parent = f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", parent], start_new_session=True)
    try:
        kb = wait_until(lambda: (k := bench._tree_rss_kb(proc.pid)) >= 60 * 1024 and k,
                        "the process tree to hold the child's 60 MB", interval=0.2)
        own = int(next(line.split()[1] for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:")))
        assert kb >= 60 * 1024 > own
    finally:
        bench._stop(proc)


def test_report_renders_with_and_without_engine(tmp_path: Path) -> None:
    doc = {"report": "bench", "format": 1, "file": "dx-x", "runs": 1, "machine": {"cpu": "c", "cores": 2,
           "arch": "x86_64"}, "prompt_chars": 10, "max_tokens": 64, "figures": list(bench.FIGURES),
           "labels": {k: k for k in bench.FIGURES}, "dx": {k: 2.0 for k in bench.FIGURES}, "baseline": None}
    md = write_report(tmp_path / "a", "bench-report", doc)[1].read_text()
    assert "| decode_tps | 2.000 |" in md
    doc["dx"]["first_start_ready_s"] = None
    doc.update(engine={k: 1.0 for k in bench.FIGURES if k != "first_start_ready_s"},
               ratio={k: 2.0 for k in bench.FIGURES if k != "first_start_ready_s"})
    paths = write_report(tmp_path / "b", "bench-report", doc)
    assert "| decode_tps | 2.000 | 1.000 | 2.000 |" in paths[1].read_text()
    ET.fromstring(paths[2].read_text())


def test_not_an_executable(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigurationError, match="is not an executable file"):
        bench.bench_executable(tmp_path / "f")


@pytest.mark.integration
def test_bench_minted_smollm2(minted_smollm2: Path, tmp_path: Path) -> None:
    """The real minted SmolLM2 executable vs its own engine: every figure present and positive."""
    doc, paths = bench.bench_and_report(minted_smollm2, tmp_path, runs=1, vs_engine=True)
    for k in bench.FIGURES:
        assert doc["dx"][k] and doc["dx"][k] > 0, k
    for k in ("start_to_first_token_s", "ttft_s", "prefill_tps", "decode_tps", "peak_rss_mb"):
        assert doc["engine"][k] > 0 and doc["ratio"][k] > 0, k
    assert doc["engine"]["warm_start_ready_s"] > 0 and "warm_start_ready_s" not in doc["ratio"]
    assert json.loads(paths[0].read_text())["dx"] == doc["dx"]
    # a baseline 10x faster than reality is a regression, named, with the report still written
    fast = dict(doc, dx={k: (v * 10 if k in bench.HIGHER_IS_BETTER else v / 10) for k, v in doc["dx"].items()})
    (tmp_path / "base.json").write_text(json.dumps(fast))
    with pytest.raises(IntegrityError, match=r"decode_tps .* worse than the baseline"):
        bench.bench_and_report(minted_smollm2, tmp_path / "again", runs=1, baseline=tmp_path / "base.json")
