"""Benchmark script (not a test): a minted executable vs its own llama-server, same model, same session.

    python3 tests/bench/bench_minted_vs_engine.py [EXE] [--runs N]

Without EXE it mints the cpu SmolLM2 executable first (cached engine and bundle).
Prints the Markdown report (figures, dx/direct ratios) and writes bench-report.*
next to it. The same as `dxbuild bench EXE --vs-engine --runs N`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("exe", nargs="?", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    exe = args.exe
    if exe is None:
        out = Path(tempfile.mkdtemp(prefix="dx-bench-mint-"))
        subprocess.run([sys.executable, "-m", "dxbuild", "--gpu", "cpu", "--model", "smollm2", "-o", str(out),
                        "--no-bench"], check=True)
        exe = next(p for p in out.iterdir() if p.name.startswith("dx-smollm2-cpu-") and "." not in p.name)
    from dxbuild.release.bench import bench_and_report

    _, paths = bench_and_report(exe, exe.parent, runs=args.runs, vs_engine=True, echo=print)
    print(paths[1].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
