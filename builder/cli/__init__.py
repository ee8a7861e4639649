"""The `dxbuild` command line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dxbuild import __version__
from dxbuild.cli.engine_cmds import register as register_engine_commands
from dxbuild.cli.release_cmds import register as register_trust_commands
from dxverify.cli_errors import run_cli


def _mint_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The mint options, shared by ``dxbuild [OPTIONS]`` and ``dxbuild mint [OPTIONS]``."""
    f = click.option("--no-bench", is_flag=True, help="Skip the benchmark report step.")(f)
    f = click.option("--webui", is_flag=True,
                     help="Build llama.cpp's web UI into the engine (needs npm; about 2.5 MB more).")(f)
    f = click.option("--cuda-libs", type=click.Choice(["thin", "fat"]), default=None,
                     help="CUDA tiers: thin (default) leaves cuBLAS/cudart out — found at run time in the DX runtime"
                          " pack, the nvidia pip wheels or a system CUDA; fat carries them (~600 MB more).")(f)
    f = click.option("--cuda-archs", metavar="LIST",
                     help='Narrow a CUDA tier to these architectures, e.g. "90" (each costs ~20 min of compile'
                          " on 2 cores; releases use the recipe's list).")(f)
    f = click.option("--previous-size-report", type=click.Path(dir_okay=False, path_type=Path), metavar="JSON",
                     help="A previous size-report.json: an over-budget failure names what grew.")(f)
    f = click.option("--key", "signing_key", type=click.Path(dir_okay=False, path_type=Path), metavar="PEM",
                     help="Ed25519 signing key (else DX_SIGNING_KEY; unsigned without one).")(f)
    f = click.option("--sha256", metavar="HEX", help="Expected SHA-256 of the model (hf: and local paths).")(f)
    f = click.option("-o", "--output", "out_dir", type=click.Path(file_okay=True, path_type=Path),
                     default=Path("dist"), show_default=True, help="Directory to write the executable to.")(f)
    f = click.option("--model", metavar="MODEL",
                     help="Recipe name (smollm2, llama3.2), an Ollama registry NAME[:TAG] (qwen2.5:0.5b),"
                          " hf:OWNER/REPO/FILE.gguf, or a .gguf path; without it the bare runtime is written.")(f)
    f = click.option("--draft", metavar="MODEL", default=None,
                     help="A draft model for speculative decoding, embedded next to --model (same forms); it must"
                          " share the model's vocabulary (checked before anything is written).")(f)
    f = click.option("--arch", metavar="ARCH", default=None,
                     help="Target CPU architecture: x86_64 or arm64 (aarch64); default: this machine's.")(f)
    f = click.option("--gpu", "tier", metavar="TIER", default=None,
                     help="Tier: cpu (default), cuda13, cuda12, vulkan, rocm, metal, or auto.")(f)
    return f


def _run_mint(tier: str | None, model: str | None, out_dir: Path, sha256: str | None,
              signing_key: Path | None, no_bench: bool = False, previous_size_report: Path | None = None,
              cuda_archs: str | None = None, webui: bool = False, arch: str | None = None,
              cuda_libs: str | None = None, draft: str | None = None) -> None:
    from dxbuild.mint import DEFAULT_TIER, mint

    result = mint(tier or DEFAULT_TIER, model, out_dir, sha256=sha256, signing_key=signing_key,
                  options={"no_bench": no_bench, "cuda_archs": cuda_archs, "webui": webui, "arch": arch,
                           "cuda_libs": cuda_libs, "draft": draft,
                           "previous_size_report": str(previous_size_report) if previous_size_report else None})
    click.echo(str(result.path))
    click.echo(f"  size   {result.size} bytes ({result.size / 1e6:.1f} MB)")
    click.echo(f"  sha256 {result.sha256}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.version_option(__version__, prog_name="dxbuild")
@_mint_options
@click.pass_context
def cli(ctx: click.Context, tier: str | None, model: str | None, out_dir: Path, sha256: str | None,
        signing_key: Path | None, no_bench: bool, cuda_archs: str | None, webui: bool,
        previous_size_report: Path | None, arch: str | None, cuda_libs: str | None, draft: str | None) -> None:
    """dxbuild — mint self-contained LLM executables.

    `dxbuild --gpu TIER --model MODEL [-o DIR]` mints DIR/dx-MODEL-TIER-OS-ARCH;
    without --model it writes the bare runtime DIR/dx-TIER-OS-ARCH. With no
    options at all it prints this help.
    """
    if ctx.invoked_subcommand is not None:
        return
    given = [p for p in ("tier", "model", "out_dir", "sha256", "signing_key", "no_bench", "previous_size_report",
                         "cuda_archs", "webui", "arch", "cuda_libs", "draft")
             if ctx.get_parameter_source(p) is not click.core.ParameterSource.DEFAULT]
    if not given:
        click.echo(ctx.get_help())
        return
    _run_mint(tier, model, out_dir, sha256, signing_key, no_bench, previous_size_report, cuda_archs, webui, arch,
              cuda_libs, draft)


@cli.command("mint")
@_mint_options
def mint_cmd(tier: str | None, model: str | None, out_dir: Path, sha256: str | None,
             signing_key: Path | None, no_bench: bool, cuda_archs: str | None, webui: bool,
             previous_size_report: Path | None, arch: str | None, cuda_libs: str | None,
             draft: str | None) -> None:
    """Mint one executable (same as the options on `dxbuild` itself)."""
    _run_mint(tier, model, out_dir, sha256, signing_key, no_bench, previous_size_report, cuda_archs, webui, arch,
              cuda_libs, draft)


@cli.command("install-script")
@click.option("--base-url", envvar="DX_RELEASE_BASE_URL", metavar="URL",
              help="Where the release files live (env DX_RELEASE_BASE_URL).")
@click.option("--public-key", "public_key", type=click.Path(dir_okay=False, path_type=Path), metavar="PEM",
              envvar="DX_RELEASE_PUBLIC_KEY", help="Ed25519 public key (dx-release.pub) to bake in.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write here (mode 755) instead of standard output.")
def install_script(base_url: str | None, public_key: Path | None, output: Path | None) -> None:
    """Render install.sh for one release (URL and public key baked in)."""
    from dxbuild.release.install_script import load_public_key_pem, render_install_script
    from dxbuild.templates import write_atomically
    from dxverify.errors import ConfigurationError

    if not base_url:
        raise ConfigurationError("no release URL", hint="pass --base-url URL (or set DX_RELEASE_BASE_URL)")
    pem = load_public_key_pem(public_key) if public_key else None
    text = render_install_script(base_url, pem)
    if pem is None:
        click.echo("dxbuild: warning: no --public-key: the script will install without checking signatures",
                   err=True)
    if output is None:
        click.echo(text, nl=False)
    else:
        write_atomically(output, text, mode=0o755)
        click.echo(f"wrote {output}", err=True)


register_trust_commands(cli)  # keygen, sign, verify-release, manifest, bench, repro
register_engine_commands(cli)  # engine, matrix, schema


@cli.command("wheel")
@click.option("--tier", required=True, metavar="TIER", help="cpu, cuda13, vulkan, …: builds dx-engine-TIER.")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("dist"),
              show_default=True, help="Directory to write the wheel to.")
@click.option("--cuda-archs", metavar="LIST", help='Narrow a CUDA tier, e.g. "90" (releases use the recipe\'s list).')
@click.option("--metadata", is_flag=True, help="Print the wheel's METADATA (from scikit-build-core; compiles nothing).")
def wheel_cmd(tier: str, out_dir: Path, cuda_archs: str | None, metadata: bool) -> None:
    """Build the engine wheel dx-engine-TIER with scikit-build-core (cached by the engine key); print its path."""
    from dxbuild.engine.wheel import build_wheel, wheel_metadata
    from dxmatrix.cell import parse_cuda_archs

    if metadata:
        click.echo(wheel_metadata(tier), nl=False)
        return
    archs = parse_cuda_archs(cuda_archs) if cuda_archs is not None else None
    click.echo(str(build_wheel(tier, out_dir, cuda_archs=archs, echo=lambda line: click.echo(line, err=True)).path))


@cli.command("render-ci")
@click.option("--check", is_flag=True, help="Exit non-zero if the committed workflows differ; write nothing.")
def render_ci_cmd(check: bool) -> None:
    """Render .github/workflows/{release,ci}.yml from ci/workflows/*.j2 and the matrix."""
    from dxbuild.release.render_ci import stale_workflows, write_workflows
    from dxverify.errors import ConfigurationError

    if check:
        stale = stale_workflows()
        if stale:
            raise ConfigurationError(f"workflows out of date: {', '.join(stale)}",
                                     hint="run `dxbuild render-ci` and commit the result")
        click.echo("workflows up to date")
        return
    written = write_workflows()
    for p in written:
        click.echo(f"wrote {p}")
    if not written:
        click.echo("workflows up to date")


def main() -> None:
    sys.exit(run_cli(cli, "dxbuild"))
