"""Tiers side by side on SmolLM2: prefill and decode tokens/s of each engine built here, in one run,
with the ratio to the native cpu tier (the figure: lavapipe and qemu are slower by design).

Run: python3 tests/bench/bench_tiers.py [--runs 2] [-p 64] [-n 32] [-t 1] [--json FILE]

-t defaults to 1 thread: on a shared 2-core machine, ggml's spinning thread pool with 2 threads
collapses whenever another process takes a core (decode measured here at 5 and 0.2 tokens/s in
two runs a minute apart; 63 with one thread), which makes ratios noise.

Rows (each only when its engine is in the DX cache; nothing is built here):
  cpu                      native, the best CPU variant for this machine
  cpu @ qemu-x86_64        the same engine under qemu-user (-cpu Haswell): the emulation's own cost
  vulkan @ lavapipe        the vulkan engine, every layer offloaded to Mesa's CPU Vulkan driver
  vulkan, no ICD           the same engine with no Vulkan driver visible (its CPU fallback)
  arm64 @ qemu (a53/max)   the cross-built arm64 engine under qemu-aarch64
Also prints each engine's cold build time (from the cache's build log), size and budget.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

LAVAPIPE = {"GGML_VK_VISIBLE_DEVICES": "0", "GGML_VK_DISABLE_F16": "1", "GGML_VK_DISABLE_COOPMAT": "1"}


def cached_engine_dir(tier: str, arch: str | None = None) -> Path | None:
    """The engine for ``tier`` (and ``arch``) if it is already in the DX cache; None otherwise."""
    from dxbuild import toolchains
    from dxbuild.engine.build import cached_engine
    from dxbuild.engine.plan import plan_engine
    from dxbuild.paths import cache_dir
    from dxbuild.toolchains.plan import host_cell
    from dxmatrix.definition import load_matrix
    from dxmatrix.recipes import get_tier, load_engine_recipe
    from dxverify.errors import DXError
    from dxverify.hashing import sha256_file as file_sha256

    try:
        recipe = load_engine_recipe()
        cell = host_cell(get_tier(tier), recipe, arch=arch, runners=load_matrix().runners)
        recipe = recipe.with_patches(cell.tier_patches)
        tc = toolchains.provision(cell, cache_dir(), cache_dir() / "logs" / "bench-tiers.log")
        plan = plan_engine(cell, recipe, tc, tuple((p.name, file_sha256(p)) for p in recipe.patch_paths()))
    except DXError as e:
        print(f"# {tier} {arch or ''}: {e}", file=sys.stderr)
        return None
    return cached_engine(plan, cache_dir())


def llama_bench(prefix: list[str], engine: Path, model: Path, p: int, n: int, runs: int, extra: list[str],
                env: dict[str, str], threads: int = 1) -> tuple[float, float, str]:
    """(prefill t/s, decode t/s, backend) from llama-bench's JSON."""
    cmd = [*prefix, str(engine / "bin" / "llama-bench"), "-m", str(model), "-p", str(p), "-n", str(n),
           "-r", str(runs), "-t", str(threads), "-o", "json", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr[-500:]}")
    rows = json.loads(r.stdout)
    pp = next(x["avg_ts"] for x in rows if x["n_prompt"] > 0)
    tg = next(x["avg_ts"] for x in rows if x["n_gen"] > 0)
    variant = ""
    for line in r.stderr.splitlines():
        if "loaded CPU backend from" in line:
            variant = line.rsplit("libggml-cpu-", 1)[-1].removesuffix(".so")
    return pp, tg, f"{rows[0].get('backends', '')} {variant}".strip()


def build_facts(engine: Path) -> str:
    info = json.loads((engine / "engine.json").read_text())
    stats = engine.parent.parent / "logs" / f"{engine.name}.build.json"
    secs = json.loads(stats.read_text())["build_seconds"] if stats.is_file() else None
    cold = f"{secs / 60:.1f} min" if secs else "?"
    return f"{info['size_bytes'] / 1e6:.1f} MB (budget {info['size_budget_mb']} MB), built in {cold}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("-p", type=int, default=64, help="prompt tokens (prefill)")
    ap.add_argument("-n", type=int, default=32, help="generated tokens (decode)")
    ap.add_argument("-t", "--threads", type=int, default=1, help="engine threads (see above)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()

    from dxbuild.models import resolve
    from dxbuild.toolchains.cross_gnu import sysroot
    from dxbuild.toolchains.run_here import qemu_user

    model = resolve("smollm2").path
    base = dict(os.environ)
    cpu = cached_engine_dir("cpu")
    vulkan = cached_engine_dir("vulkan")
    arm = cached_engine_dir("cpu", "arm64")
    plan: list[tuple[str, Path | None, list[str], list[str], dict[str, str]]] = [
        ("cpu", cpu, [], [], base),
    ]
    if cpu and qemu_user("x86_64"):
        plan.append(("cpu @ qemu-x86_64 -cpu Haswell", cpu, [str(qemu_user("x86_64")), "-cpu", "Haswell"], [], base))
    if vulkan:
        plan.append(("vulkan @ lavapipe", vulkan, [], ["-ngl", "99"], {**base, **LAVAPIPE}))
        plan.append(("vulkan, no ICD (CPU fallback)", vulkan, [], ["-ngl", "99"],
                     {**base, **LAVAPIPE, "VK_ICD_FILENAMES": "/nonexistent.json"}))
    if arm and qemu_user("arm64"):
        for cpu_model in ("cortex-a53", "max"):
            plan.append((f"arm64 @ qemu-aarch64 -cpu {cpu_model}", arm,
                         [str(qemu_user("arm64")), "-cpu", cpu_model, "-L", str(sysroot("arm64"))], [], base))
    print(f"model {model.name} ({model.stat().st_size / 1e6:.1f} MB), pp{args.p} / tg{args.n}, "
          f"{args.runs} runs, {args.threads} thread(s); load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name, eng in (("cpu", cpu), ("vulkan", vulkan), ("cpu arm64", arm)):
        print(f"  engine {name:10} " + (build_facts(eng) if eng else "not in the cache (dxbuild engine …)"))
    rows = []
    ref: tuple[float, float] | None = None
    print(f"{'engine':40} {'prefill t/s':>12} {'decode t/s':>11} {'pp ratio':>9} {'tg ratio':>9}  backend")
    for name, eng, prefix, extra, env in plan:
        if eng is None:
            continue
        try:
            pp, tg, backend = llama_bench(prefix, eng, model, args.p, args.n, args.runs, extra, env, args.threads)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"{name:40} failed: {e}")
            continue
        if ref is None:
            ref = (pp, tg)
        rows.append({"engine": name, "prefill_tps": pp, "decode_tps": tg, "backend": backend,
                     "prefill_ratio": pp / ref[0], "decode_ratio": tg / ref[1]})
        print(f"{name:40} {pp:12.2f} {tg:11.2f} {pp / ref[0]:9.3f} {tg / ref[1]:9.3f}  {backend}", flush=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
