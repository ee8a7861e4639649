#!/usr/bin/env python3
"""Benchmark `dx verify`: SHA-256 throughput vs sha256sum, structure-check time, peak memory vs file size.

    python3 tests/bench/bench_verify.py [--gguf PATH] [--size-gb 1] [--workdir /tmp]

Prints numbers and ratios side by side; asserts nothing (goals are printed next
to the figures). Generated files go under --workdir and are deleted at the end.

- throughput: a real (non-sparse) GGUF of --size-gb, page cache warmed first, best of 3,
  `sha256sum FILE` vs `dx verify --sha256 HEX FILE` (both whole processes) and the
  in-process `dxverify.hashing.sha256_file`.   Goal: dx >= 0.9x sha256sum. `openssl dgst`
  is printed too: Debian's sha256sum does not use the CPU's SHA instructions, OpenSSL does.
- structure check: `read_gguf` on SmolLM2-135M (via the model recipe unless --gguf), median of 30.
  Goal: < 50 ms.
- peak memory: max RSS of `dx verify` (hash + structure) on a 1 GiB and a 4 GiB GGUF (sparse
  data section), from GNU time's %M.   Goal: independent of file size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers in support/
from support.gguf_handcraft import Tensor, tiny_model

from dxverify.gguf import read_gguf
from dxverify.hashing import sha256_file

GIB = 1024**3


def write_gguf(path: Path, data_bytes: int, sparse: bool) -> None:
    """A valid GGUF: the tiny model's metadata and one F32 tensor filling ``data_bytes``."""
    c = tiny_model()
    c.tensors = [Tensor("big.weight", [1024, data_bytes // 4096], 0)]
    c.data_bytes = 0
    header = c.build().data
    with open(path, "wb") as fh:
        fh.write(header)
        if sparse:
            fh.truncate(len(header) + data_bytes)
            return
        block = os.urandom(64 * 1024 * 1024)
        left = data_bytes
        while left:
            n = min(left, len(block))
            fh.write(block[:n])
            left -= n


def best_of(n: int, fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def peak_rss_kib(cmd: list[str]) -> int:
    """Max RSS of ``cmd`` alone. GNU time forks it from a small C process; measured from this
    Python process, a forked child would also count the pages it shares with us before exec."""
    gnu_time = shutil.which("time") or "/usr/bin/time"
    if Path(gnu_time).exists():
        r = subprocess.run(
            [gnu_time, "-f", "%M", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        if r.returncode != 0:
            raise SystemExit(f"{cmd} failed: {r.stderr}")
        return int(r.stderr.strip().splitlines()[-1])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed")
    return usage.ru_maxrss


def smollm2_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    from dxbuild.models import resolve

    return resolve("smollm2").path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", help="model for the structure-check timing (default: SmolLM2 via its recipe)")
    ap.add_argument("--size-gb", type=float, default=1.0, help="size of the throughput file in GiB (>= 1)")
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    args = ap.parse_args()
    dx = shutil.which("dx") or sys.exit("dx is not on PATH (pip install -e .)")
    sha256sum = shutil.which("sha256sum") or sys.exit("sha256sum not found")
    work = Path(tempfile.mkdtemp(prefix="bench-verify-", dir=args.workdir))
    try:
        # 1. throughput
        size = int(args.size_gb * GIB)
        big = work / "throughput.gguf"
        write_gguf(big, size, sparse=False)
        total = big.stat().st_size
        run(["cat", str(big)])  # warm the page cache so both tools read from memory
        expected = subprocess.run(
            [sha256sum, str(big)], check=True, capture_output=True, text=True
        ).stdout.split()[0]
        assert sha256_file(big) == expected
        t_sum = best_of(3, lambda: run([sha256sum, str(big)]))
        t_dx = best_of(3, lambda: run([dx, "verify", "--sha256", expected, str(big)]))
        t_lib = best_of(3, lambda: sha256_file(big))
        openssl = shutil.which("openssl")
        t_ossl = best_of(3, lambda: run([openssl, "dgst", "-sha256", str(big)])) if openssl else None
        mb = total / 1e6
        print(f"file: {total:,} bytes (GGUF, random data, page cache warm)")
        print(f"{'sha256sum':<28}{t_sum:8.3f} s  {mb / t_sum:8.0f} MB/s")
        print(
            f"{'dx verify (whole process)':<28}{t_dx:8.3f} s  {mb / t_dx:8.0f} MB/s  ratio {t_sum / t_dx:.2f}x  (goal >= 0.9x)"
        )
        if t_ossl:
            print(f"{'openssl dgst -sha256':<28}{t_ossl:8.3f} s  {mb / t_ossl:8.0f} MB/s  (uses SHA-NI)")
            print(f"{'  dx verify vs openssl':<28}ratio {t_ossl / t_dx:.2f}x")
        print(
            f"{'sha256_file (in-process)':<28}{t_lib:8.3f} s  {mb / t_lib:8.0f} MB/s  ratio {t_sum / t_lib:.2f}x"
        )
        big.unlink()

        # 2. structure check
        model = smollm2_path(args.gguf)
        read_gguf(model).close()
        samples, cpu = [], []
        for _ in range(30):
            t, c = time.perf_counter(), time.process_time()
            read_gguf(model).close()
            samples.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        print(
            f"structure check {model.name[:40]}: wall median {statistics.median(samples) * 1e3:.1f} ms "
            f"(min {min(samples) * 1e3:.1f}, max {max(samples) * 1e3:.1f}), CPU median "
            f"{statistics.median(cpu) * 1e3:.1f} ms over 30  (goal < 50 ms; load {os.getloadavg()[0]:.1f})"
        )

        # 3. peak memory vs file size
        rss = {}
        for gib in (1, 4):
            f = work / f"sparse-{gib}g.gguf"
            write_gguf(f, gib * GIB, sparse=True)
            rss[gib] = peak_rss_kib([dx, "verify", str(f)])
            f.unlink()
        print(
            f"peak RSS of dx verify: 1 GiB file {rss[1] / 1024:.1f} MiB, 4 GiB file {rss[4] / 1024:.1f} MiB, "
            f"ratio {rss[4] / rss[1]:.2f}x  (goal: ~1.0x, independent of size)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
