"""Step: benchmark the minted executable on this machine (bench-report.{json,md,svg}).

Runs dxbuild.release.bench on each executable that carries a model and was built for
this machine's OS and architecture. ``--no-bench`` skips it; ``--bench-runs N``
and ``--bench-vs-engine`` tune it (defaults: 1 run, DX only, so a mint stays quick;
``dxbuild bench EXE --runs 5 --vs-engine`` is the full measurement).
"""

from __future__ import annotations

import platform
import sys

import click

from dxbuild.context import ArtifactType, BuildContext, Skip

name = "bench report"
_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


def run(ctx: BuildContext) -> None:
    if ctx.options.no_bench:
        raise Skip("disabled with --no-bench")
    from dxbuild.release.bench import bench_and_report
    from dxverify.trailer import find_trailer

    host_os = {"linux": "linux", "darwin": "macos", "win32": "windows"}.get(sys.platform, sys.platform)
    host_arch = _ARCH.get(platform.machine().lower(), platform.machine().lower())
    todo = []
    for a in ctx.of(ArtifactType.EXECUTABLE):
        os_name, arch = a.extra.get("os") or ctx.cell.os, a.extra.get("arch") or ctx.cell.arch
        if (os_name, _ARCH.get(arch, arch)) != (host_os, host_arch):
            continue
        if find_trailer(a.path) is None:
            continue
        todo.append(a.path)
    if not todo:
        raise Skip("no executable with a model built for this machine's OS and architecture")
    for exe in todo:
        _, paths = bench_and_report(
            exe, ctx.out_dir, runs=1, vs_engine=False,
            echo=lambda s: click.echo(f"    {s}", err=True))
        for p in paths:
            ctx.add(ArtifactType.REPORT, p, report="bench")
