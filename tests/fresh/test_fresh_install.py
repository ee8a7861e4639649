"""The README's first command, as a new user runs it: a brand-new venv, no extras, nothing by hand.

The rest of the suite runs in an environment that has the ``[test]`` extras, so a
product import that only those extras install passes every other test and breaks
the first user (it happened: cyclonedx's JSON validation and httpx). These tests
install a copy of the checkout into a new venv exactly as the README says and run
the README's own command line, parsed from README.md, with the DX cache warm (the
engine and the Nuitka bundle are keyed by content, so a warm cache makes the mint
take seconds; a cold one builds them, which takes minutes).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dx", "dxbuild", "dxverify", "dxmatrix")

pytestmark = pytest.mark.integration


def readme_first_command(readme: Path = ROOT / "README.md") -> str:
    """The first ``sh`` block under "Set-up on a fresh machine": the command a new user pastes."""
    text = readme.read_text(encoding="utf-8")
    section = text.split("## Set-up on a fresh machine", 1)
    assert len(section) == 2, "README.md has no '## Set-up on a fresh machine' section"
    m = re.search(r"```sh\n(.*?)```", section[1], re.S)
    assert m, "the set-up section has no ```sh block"
    lines = [ln for ln in m.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(lines) == 1, f"the first set-up block should be one command line, found {lines}"
    return lines[0]


def test_readme_first_command_is_the_install_and_mint() -> None:
    cmd = readme_first_command()
    assert "pip install" in cmd and "[test]" not in cmd, cmd  # no extras for a user
    assert "dxbuild" in cmd and " run " in cmd, cmd


def _checkout_copy(dest: Path) -> Path:
    """The files a fresh clone would have (tracked, plus new files git does not ignore)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True, timeout=60).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = []
    if not names:  # not a git checkout (an unpacked sdist): everything but build leftovers
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", ".venv", "dist", "build", "*.egg-info",
                                                                  "__pycache__", ".*_cache"))
        return dest
    for name in names:
        src = ROOT / name
        if not src.is_file():
            continue  # deleted in the working tree
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / name)
    return dest


def _fresh_env(venv: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_", "DX_HOME", "DX_ENGINE", "DX_TEST"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["DX_HOME"] = str(home)           # a new user's ~/.dx
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if "DX_CACHE_DIR" not in env:        # the suite's warm cache: same keys, so seconds instead of minutes
        env["DX_CACHE_DIR"] = str(Path.home() / ".cache" / "dx")
    return env


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory: pytest.TempPathFactory, cpu_engine: Path) -> dict[str, object]:
    """A copy of the checkout, a new venv, and the README's first command run in it."""
    base = tmp_path_factory.mktemp("fresh")
    tree = _checkout_copy(base / "dx")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = _fresh_env(venv, base / "home")
    cmd = readme_first_command()
    t0 = time.monotonic()
    res = subprocess.run(["bash", "-c", cmd], cwd=tree, env=env, capture_output=True, text=True,
                         timeout=3600, stdin=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    print(f"\nREADME first command in a fresh venv: {wall:.1f} s (exit {res.returncode})")
    return {"tree": tree, "venv": venv, "env": env, "result": res, "wall": wall}


def test_readme_first_command_in_fresh_venv(fresh_install: dict[str, object]) -> None:
    res = fresh_install["result"]
    assert isinstance(res, subprocess.CompletedProcess)
    tail = f"\n--- stdout ---\n{res.stdout[-3000:]}\n--- stderr ---\n{res.stderr[-5000:]}"
    assert res.returncode == 0, f"the README's first command failed in a fresh venv (exit {res.returncode}){tail}"
    for bad in ("internal error", "Traceback (most recent call last)"):
        assert bad not in res.stderr, f"{bad!r} in the output{tail}"
    assert "dx-smollm2-cpu-linux-" in res.stdout, tail  # dxbuild printed the executable it wrote
    answer = res.stdout.split("sha256", 1)[-1]
    assert len(re.findall(r"[A-Za-z]{3,}", answer)) >= 5, f"no answer from the minted executable{tail}"
    # the release files are there, and the venv has no test packages (nothing leaked in by hand)
    dist = Path(str(fresh_install["tree"])) / "dist"
    assert (dist / "SHA256SUMS").is_file() and list(dist.glob("*.cdx.json")), sorted(os.listdir(dist))
    pip = subprocess.run([str(Path(str(fresh_install["venv"])) / "bin" / "python"), "-m", "pip", "list",
                          "--format=freeze"], capture_output=True, text=True, timeout=120).stdout.lower()
    installed = {line.split("==", 1)[0].replace("_", "-") for line in pip.splitlines()}
    assert not installed & {"pytest", "openai", "ollama", "hypothesis"}, sorted(installed)


def test_every_module_imports_in_fresh_venv(fresh_install: dict[str, object]) -> None:
    """A module-level import that only the test extras provide fails here, not for a user."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"bad = []\nfor top in {PACKAGES!r}:\n"
        "    pkg = importlib.import_module(top)\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, top + '.'):\n"
        "        try:\n            importlib.import_module(m.name)\n"
        "        except Exception as e:\n            bad.append(f'{m.name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n"
    )
    py = Path(str(fresh_install["venv"])) / "bin" / "python"
    res = subprocess.run([str(py), "-c", code], env=fresh_install["env"], cwd="/", capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, f"modules that fail to import in a plain install:\n{res.stdout}{res.stderr}"
