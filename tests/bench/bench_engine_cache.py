"""Engine cache: how long a cache hit takes, and what the cached engine weighs.

Run: python3 tests/bench/bench_engine_cache.py [--tier cpu] [--runs 5]
Builds the engine first if it is not cached (that cold time is printed too,
from engine.json). Prints numbers and the ratio to the < 5 s goal; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tier", default="cpu")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    first = subprocess.run([sys.executable, "-m", "dxbuild", "engine", "--tier", args.tier],
                           capture_output=True, text=True, check=True)
    engine = Path(first.stdout.strip())
    info = json.loads((engine / "engine.json").read_text())

    walls = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "dxbuild", "engine", "--tier", args.tier],
                           capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - t0)
        assert "cache hit" in r.stderr, r.stderr

    from dxbuild.engine.build import host_engine

    t0 = time.perf_counter()
    host_engine(args.tier, echo=None)
    in_process = time.perf_counter() - t0

    size = dir_bytes(engine)
    bins = {p.name: p.stat().st_size for p in sorted((engine / "bin").iterdir()) if p.is_file()}
    print(f"engine dir           {engine}")
    stats = engine.parent.parent / "logs" / f"{engine.name}.build.json"
    if stats.is_file():
        print(f"cold build (recorded) {json.loads(stats.read_text())['build_seconds']:.0f} s")
    print(f"cache hit, CLI       median {statistics.median(walls):.2f} s  min {min(walls):.2f} s  "
          f"({args.runs} runs; goal < 5 s: {statistics.median(walls) / 5:.2f}x of the goal)")
    print(f"cache hit, in-process {in_process:.3f} s")
    print(f"engine size          {size / 1e6:.1f} MB (budget {info['size_budget_mb']} MB: "
          f"{size / 1e6 / info['size_budget_mb']:.2f}x)")
    print(f"llama-server         {bins.get('llama-server', 0) / 1e6:.1f} MB")
    print(f"backend modules      {sum(v for k, v in bins.items() if k.startswith('libggml-')) / 1e6:.1f} MB "
          f"in {sum(1 for k in bins if k.startswith('libggml-'))} files")


if __name__ == "__main__":
    main()
