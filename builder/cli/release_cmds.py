"""`dxbuild` release commands: keygen, sign, verify-release, manifest, bench, size-report, repro, runtime-pack, install-script, render-ci.

Listed in `dxbuild.cli.COMMANDS` and imported only when one of them runs; each
command imports its module lazily so `dxbuild --help` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from dxverify.errors import DXError

_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where to write dx-release.key and dx-release.pub.")
@click.option("--passphrase", is_flag=True, help="Protect the private key with a passphrase (asked twice, "
              "or taken from DX_SIGNING_KEY_PASSPHRASE).")
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
def keygen(out_dir: Path, passphrase: bool, force: bool) -> None:
    """Write an Ed25519 release key pair (private key mode 0600)."""
    from dxbuild.release.keys import ENV_PASSPHRASE
    from dxbuild.release.keys import keygen as make_keys

    secret = None
    if passphrase:
        secret = (os.environ.get(ENV_PASSPHRASE) or click.prompt(
            "passphrase", hide_input=True, confirmation_prompt=True)).encode()
    priv, pub = make_keys(out_dir, passphrase=secret, force=force)
    click.echo(f"private key: {priv} (mode 0600; keep it secret, e.g. as the CI secret DX_SIGNING_KEY_PEM)")
    click.echo(f"public key:  {pub} (publish it; install.sh and `dx verify --key` check against it)")


@click.command()
@click.argument("directory", type=_DIR)
@click.option("--key", "key_path", type=_FILE, help="Private key (default: DX_SIGNING_KEY / DX_SIGNING_KEY_PEM).")
@click.option("--sigstore/--no-sigstore", default=True, show_default=True,
              help="Also make sigstore bundles when an OIDC identity is available.")
def sign(directory: Path, key_path: Path | None, sigstore: bool) -> None:
    """Write SHA256SUMS and signatures for every file already in DIRECTORY."""
    from dxbuild.release import sigstore as release_sigstore
    from dxbuild.release.keys import find_signing_key
    from dxbuild.steps.sign import is_release_file, sign_directory

    key = find_signing_key(key_path)
    written = sign_directory(directory, key)
    for p in written:
        click.echo(f"wrote {p}")
    if key is None:
        click.echo("signing skipped: no key (pass --key or set DX_SIGNING_KEY / DX_SIGNING_KEY_PEM)", err=True)
    token = release_sigstore.detect_identity_token() if sigstore else None
    if token:
        files = sorted(p for p in directory.iterdir() if is_release_file(p))
        for p in release_sigstore.sign_files(files, token):
            click.echo(f"wrote {p}")
    elif sigstore:
        click.echo("sigstore skipped: no OIDC identity here (CI only)", err=True)


@click.command("verify-release")
@click.argument("directory", type=_DIR)
@click.option("--key", "public_key", type=_FILE, help="Public key to trust (default: DIR/dx-release.pub).")
@click.option("--identity", help="Expected sigstore signer identity (e.g. the release workflow URL).")
@click.option("--issuer", default=None, help="Expected OIDC issuer (default: GitHub Actions).")
@click.option("--trusted-root", type=_FILE, help="sigstore trusted_root.json (default: the pinned one).")
@click.option("--allow-unsigned", is_flag=True, help="Accept a release with checksums but no signatures.")
def verify_release_cmd(directory: Path, public_key: Path | None, identity: str | None, issuer: str | None,
                       trusted_root: Path | None, allow_unsigned: bool) -> None:
    """Check every artifact in DIRECTORY against SHA256SUMS, signatures and the manifest."""
    from dxbuild.release.check import verify_release
    from dxverify.signatures import GITHUB_ACTIONS_ISSUER

    report = verify_release(directory, public_key=public_key, identity=identity,
                            issuer=issuer or GITHUB_ACTIONS_ISSUER, trusted_root=trusted_root,
                            require_signatures=not allow_unsigned)
    for line in report.notes:
        click.echo(f"note: {line}", err=True)
    for line in report.ok:
        click.echo(f"ok  {line}")
    click.echo(f"release {directory}: all {len(report.ok)} checks passed")


@click.command("manifest")
@click.argument("directory", type=_DIR)
def manifest_cmd(directory: Path) -> None:
    """(Re)build manifest.json and manifest.txt from the <artifact>.json facts files in DIRECTORY."""
    from dxbuild.release.manifest import manifest_for_directory

    for p in manifest_for_directory(directory):
        click.echo(f"wrote {p}")


@click.command()
@click.argument("exe", type=_FILE)
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1, 100), help="Runs per figure (median).")
@click.option("--vs-engine", is_flag=True, help="Also run llama-server directly on the same model; report ratios.")
@click.option("--engine", type=_FILE, help="llama-server to compare with (default: the one inside EXE).")
@click.option("--model", "model_arg", help="Model for the direct engine run (default: the one embedded in EXE).")
@click.option("--baseline", type=_FILE, help="A previous bench-report.json: fail when a figure regressed.")
@click.option("--tolerance", default=0.1, show_default=True, type=click.FloatRange(0, 10),
              help="Allowed regression against --baseline (0.1 = 10%).")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where to write bench-report.{json,md,svg}.")
def bench(exe: Path, runs: int, vs_engine: bool, engine: Path | None, model_arg: str | None,
          baseline: Path | None, tolerance: float, out_dir: Path) -> None:
    """Benchmark a minted executable on this machine (start, first token, tokens/s, memory)."""
    from dxbuild.release.bench import bench_and_report

    _, paths = bench_and_report(exe, out_dir, runs=runs, vs_engine=vs_engine, engine=engine, model_arg=model_arg,
                                  baseline=baseline, tolerance=tolerance,
                                  echo=lambda s: click.echo(s, err=True))
    click.echo(paths[1].read_text(), nl=False)
    for p in paths:
        click.echo(f"wrote {p}", err=True)


@click.command("size-report")
@click.argument("exes", nargs=-1, required=True, type=_FILE)
@click.option("--budget-mb", type=click.IntRange(1), help="Engine directory budget (default: the tier recipe's).")
@click.option("--previous-size-report", "previous", type=_FILE, help="Name what grew against this report.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where to write size-report.{json,md,svg}.")
def size_report_cmd(exes: tuple[Path, ...], budget_mb: int | None, previous: Path | None, out_dir: Path) -> None:
    """Split executables into engine, backends, Python, Nuitka, model; check the tier budget."""
    from dxbuild.steps.size_report import size_report
    from dxverify.trailer import find_trailer

    items = []
    for exe in exes:
        em = find_trailer(exe)
        tier = str(em.metadata.get("tier")) if em else (exe.name.split("-")[-3] if exe.name.count("-") >= 3 else "")
        budget = budget_mb
        if budget is None and tier:
            try:
                from dxmatrix.recipes import get_tier

                budget = get_tier(tier).size_budget_mb
            except DXError:  # an unknown tier simply has no budget here
                budget = None
        items.append((exe, tier or "unknown", budget, None))
    _, paths = size_report(items, out_dir, previous)
    click.echo(paths[1].read_text(), nl=False)
    for p in paths:
        click.echo(f"wrote {p}", err=True)


@click.command()
@click.option("--tier", default="cpu", show_default=True, help="Engine tier to build twice.")
@click.option("--target", "targets", multiple=True, help="Build only these targets (default: the recipe's).")
@click.option("--single-cpu-variant", is_flag=True, help="GGML_CPU_ALL_VARIANTS=OFF: a smaller, quicker repeat.")
@click.option("--bundle", "with_bundle", is_flag=True, help="Also compile the runtime bundle twice (Nuitka).")
@click.option("--keep", is_flag=True, help="Keep both build trees for inspection.")
@click.option("-o", "--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the JSON report here.")
def repro(tier: str, targets: tuple[str, ...], single_cpu_variant: bool, with_bundle: bool, keep: bool,
          out_file: Path | None) -> None:
    """Build the engine (and bundle) twice from scratch; report what differs and why (slow: cold builds)."""
    import json

    from dxbuild.release.reproducibility import repro_bundle, repro_engine

    echo = lambda s: click.echo(s, err=True)  # noqa: E731
    overrides = {"GGML_CPU_ALL_VARIANTS": "OFF"} if single_cpu_variant else None
    report = {"engine": repro_engine(tier, targets=targets or None, cmake_overrides=overrides, keep=keep,
                                     echo=echo)}
    if with_bundle:
        from dxbuild.engine.build import host_engine

        engine_dir = host_engine(tier, echo=echo)
        key = json.loads((engine_dir / "engine.json").read_text())["key"]
        report["bundle"] = repro_bundle(engine_dir, tier=tier, engine_key=key, echo=echo)
    text = json.dumps(report, indent=2) + "\n"
    if out_file:
        out_file.write_text(text)
    for part, r in report.items():
        verdict = "byte-identical" if r["reproducible"] else f"{len(r['different'])} file(s) differ"
        click.echo(f"{part}: {len(r['identical'])} identical, {verdict}")
        for d in r["different"]:
            causes = "; ".join(d["causes"]) or "cause not recognised"
            click.echo(f"  {d['path']}: {d['kind']} ({causes})")


@click.command("runtime-pack")
@click.option("--cuda", "major", type=int, default=13, show_default=True, help="CUDA major version.")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("dist"),
              show_default=True, help="Release directory to write it to (its manifest and SHA256SUMS are updated).")
@click.option("--arch", default=None, metavar="ARCH", help="x86_64 or arm64 (default: this machine's).")
@click.option("--key", "key_path", type=_FILE, help="Private key (default: DX_SIGNING_KEY / DX_SIGNING_KEY_PEM).")
def runtime_pack_cmd(major: int, out_dir: Path, arch: str | None, key_path: Path | None) -> None:
    """Write dx-cudaN-runtime-linux-ARCH.tar.xz (cuBLAS, cuBLASLt, cudart + licences) for thin executables."""
    from dxbuild.release.keys import find_signing_key
    from dxbuild.release.manifest import manifest_for_directory
    from dxbuild.release.runtime_pack import build_runtime_pack
    from dxbuild.steps.sign import sign_directory

    key = find_signing_key(key_path)
    pack = build_runtime_pack(major, out_dir, arch=arch, echo=lambda line: click.echo(line, err=True))
    click.echo(str(pack.path))
    click.echo(f"  size     {pack.size} bytes ({pack.size / 1e6:.1f} MB; {pack.unpacked / 1e6:.1f} MB unpacked)")
    click.echo(f"  sha256   {pack.sha256}")
    click.echo(f"  version  {pack.version}")
    manifest_for_directory(out_dir)
    sign_directory(out_dir, key)
    if key is None:
        click.echo("signing skipped: no key (pass --key or set DX_SIGNING_KEY / DX_SIGNING_KEY_PEM)", err=True)


@click.command("install-script")
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


@click.command("render-ci")
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
