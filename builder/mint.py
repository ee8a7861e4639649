"""Plan and run one mint: ``dxbuild --gpu TIER --model MODEL -o DIR``.

Everything that can be wrong with the request or the machine (tier and its
toolchain, Nuitka's prerequisites, writable output and cache, disk space, the
signing key, the model's host: ``dxbuild.preflight``) is checked before any
download or compile starts, so a doomed mint costs a second, not a build. The pipeline then runs its steps (dxbuild.pipeline); if any step
fails, the temporary file it was writing in the output directory is removed —
the directory never holds a half-written executable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from dx.host.hardware import Hardware, detect
from dx.host.tiers import TierChoice
from dx.host.tiers import pick_tier as machine_tier
from dxbuild.context import ArtifactType, BuildContext, MintOptions
from dxmatrix.cell import Cell
from dxverify.errors import ConfigurationError, DXError

DEFAULT_TIER = "cpu"


@dataclass(frozen=True)
class MintResult:
    path: Path
    size: int
    sha256: str
    context: BuildContext


def pick_tier(hw: Hardware | None = None) -> TierChoice:
    """``--gpu auto``: the tier ``dx doctor`` names for this machine, when this host can build it; else cpu.

    One picker decides for both (``dx.host.tiers.pick_tier``, on ``dx.host.hardware``'s one probe), so
    ``dxbuild --gpu auto`` and ``dx doctor`` cannot disagree about the machine; the builder only adds
    whether the toolchain for that tier is here (cpu runs everywhere, GPU tiers carry CPU kernels too).
    """
    from dxbuild.toolchains import host_problem
    from dxbuild.toolchains.plan import plan_host_cell

    choice = machine_tier(hw if hw is not None else detect())
    if choice.tier == DEFAULT_TIER:
        return choice
    try:
        problem = host_problem(plan_host_cell(choice.tier)[0])
    except DXError as exc:
        problem = str(exc)
    if problem:
        return TierChoice(DEFAULT_TIER, f"{choice.reason}, but the {choice.tier} tier cannot be built here: {problem}",
                          choice.advice)
    return choice


def check_output_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` if needed and prove we can write there, before any work."""
    out_dir = out_dir.expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigurationError(f"output directory {out_dir} is a file, not a directory",
                                 hint="pass -o with a directory path")
    from dxbuild.preflight import writable_problem

    problem = writable_problem(out_dir, "output directory", "choose another -o directory or fix its permissions",
                               ConfigurationError)
    if problem is not None:
        raise problem
    return out_dir.resolve()


def plan_cell(tier: str, cuda_archs: str | None = None, webui: bool = False, arch: str | None = None) -> Cell:
    """The frozen build cell for ``tier`` on this host (unknown tier → one clear line).

    ``cuda_archs`` ("90", "86;90") narrows a CUDA tier's architectures for a local build.
    ``arch`` (``--arch arm64``/``aarch64``) other than this machine's: the engine cross-compiles,
    and Nuitka, which compiles only for the machine it runs on, runs under qemu-user in a Debian
    root of that arch (``dxbuild.bundle.foreign``; root, debootstrap and qemu-user-static needed).
    """
    from dxbuild.toolchains.host import HOST_ARCH
    from dxbuild.toolchains.plan import host_cell
    from dxmatrix.cell import normalize_arch, parse_cuda_archs
    from dxmatrix.definition import load_matrix
    from dxmatrix.recipes import get_tier, load_engine_recipe
    from dxverify.errors import UnsupportedError

    foreign = arch is not None and normalize_arch(arch) != HOST_ARCH
    if foreign:
        from dxbuild.bundle.foreign import foreign_problem

        target = normalize_arch(arch)
        problem = foreign_problem(target)
        if problem is not None:
            runner = load_matrix().runners.get(f"linux-{target}", "a runner of that arch")
            raise UnsupportedError(
                f"an {target} executable cannot be minted on this {HOST_ARCH} machine: Nuitka compiles the dx "
                f"runtime only for the machine it runs on, and its qemu route is closed here ({problem})",
                hint=f"fix that, or mint it on an {target} machine (the release workflow uses {runner}); "
                     f"`dxbuild engine --tier {tier} --arch {target}` cross-builds its engine here")
    archs = parse_cuda_archs(cuda_archs) if cuda_archs is not None else None
    cell = host_cell(get_tier(tier), load_engine_recipe(), cuda_archs=archs, runners=load_matrix().runners,
                     arch=normalize_arch(arch) if foreign else None)
    if webui:
        from dxbuild.engine.plan import with_webui

        cell = with_webui(cell)
    return cell


def mint(options: MintOptions, *, steps: list | None = None) -> MintResult:
    """Run the whole pipeline and return the executable that was written."""
    from dxbuild.modelfile import load
    from dxbuild.pipeline import default_steps, run_steps

    options, modelfile = load(options)  # --modelfile: parsed and checked first, then FROM/ADAPTER/DRAFT are flags
    tier = options.tier or DEFAULT_TIER
    if tier == "auto":
        choice = pick_tier()
        tier = choice.tier
        click.echo(f"--gpu auto: this host gets the {tier} tier ({choice.reason})", err=True)
    cell = plan_cell(tier, options.cuda_archs, options.webui, options.arch)
    out_dir = check_output_dir(options.out_dir)
    if steps is None:  # the real pipeline: check everything that can be checked before any work starts
        from dxbuild import preflight
        from dxbuild.paths import cache_dir

        preflight.preflight(preflight.plan(cell, options.model, out_dir, options.signing_key, cache_dir()),
                            echo=lambda s: click.echo(s, err=True))
    ctx = BuildContext(cell=cell, out_dir=out_dir, options=options, modelfile=modelfile)
    try:
        run_steps(ctx, steps if steps is not None else default_steps())
    finally:
        if ctx.staged is not None:
            ctx.staged.unlink(missing_ok=True)
    exe = ctx.one(ArtifactType.EXECUTABLE)
    return MintResult(exe.path, int(exe.extra["size"]), str(exe.extra["sha256"]), ctx)
