"""`dxbuild [OPTIONS]` and `dxbuild mint [OPTIONS]`: the mint options, parsed once into a MintOptions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dxbuild.context import MintOptions


def mint_options(f: Callable[..., Any]) -> Callable[..., Any]:
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
    f = click.option("--mmproj", metavar="PROJECTOR", default=None,
                     help="A multimodal (vision) projector GGUF for --model, embedded after it (same forms as"
                          " --model); the served model then takes images (llama-server --mmproj).")(f)
    f = click.option("--adapter", metavar="LORA", default=None,
                     help="A LoRA adapter GGUF for --model, embedded after it (same forms as --model); the"
                          " engine applies it to every answer (llama-server --lora). It must be made for the"
                          " model (checked before anything is written).")(f)
    f = click.option("--modelfile", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE", default=None,
                     help="Mint an Ollama Modelfile: FROM is the model (as --model; paths relative to the file),"
                          " ADAPTER the --adapter, DRAFT the --draft; SYSTEM, MESSAGE, PARAMETER, LICENSE and"
                          " TEMPLATE travel in the trailer, and the executable serves the model with them.")(f)
    f = click.option("--name", metavar="NAME", default=None,
                     help="With --modelfile: the name the executable serves its model under (and its file name);"
                          " default: the Modelfile's file name (NAME.Modelfile), else the FROM model's name.")(f)
    f = click.option("--arch", metavar="ARCH", default=None,
                     help="Target CPU architecture: x86_64 or arm64 (aarch64); default: this machine's.")(f)
    f = click.option("--gpu", "tier", metavar="TIER", default=None,
                     help="Tier: cpu (default), cuda13, cuda12, vulkan, rocm, metal, or auto.")(f)
    return f


def run_mint(options: MintOptions) -> None:
    from dxbuild.mint import mint

    result = mint(options)
    click.echo(str(result.path))
    click.echo(f"  size   {result.size} bytes ({result.size / 1e6:.1f} MB)")
    click.echo(f"  sha256 {result.sha256}")


@click.command("mint")
@mint_options
def mint_cmd(**flags: Any) -> None:
    """Mint one executable (same as the options on `dxbuild` itself)."""
    run_mint(MintOptions(**flags))
