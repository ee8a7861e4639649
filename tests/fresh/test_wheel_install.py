"""A plain `pip install` of the built wheel mints: nothing is read from a checkout.

The README's command installs editable, so a wheel that lacks a subpackage or a
data file (recipes, patches, templates, schemas, the sigstore root, matrix.toml,
the engine-wheel project) still passes every other test. Here the wheel is built
with `pip wheel`, installed non-editable with no extras into a new venv, and
`dxbuild --model smollm2` runs from a folder outside the checkout, with the DX cache
warm (the engine key is the editable install's; the Nuitka bundle key hashes the
runtime's source bytes, which the wheel carries unchanged, so it is a hit too).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from test_fresh_install import ROOT, _checkout_copy, _fresh_env  # the same copy and environment

pytestmark = pytest.mark.integration

#: data the product reads through importlib.resources, as it sits in the wheel
DATA = {"recipes": "dxrecipes", "ci": "dxci"}


def _shipped_data() -> list[str]:
    """Every tracked file under recipes/ and ci/, plus matrix.toml, as a wheel member name."""
    out = subprocess.run(["git", "ls-files", "recipes", "ci", "builder/engine/engine_wheel"], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert out, "git ls-files found no data files"
    names = ["dxmatrix/matrix.toml"]
    for f in out:
        top, rest = f.split("/", 1)
        names.append(f"{DATA[top]}/{rest}" if top in DATA else f"dxbuild/{rest}")
    return names


@pytest.fixture(scope="module")
def wheel_mint(tmp_path_factory: pytest.TempPathFactory, cpu_engine: Path) -> dict[str, object]:
    base = tmp_path_factory.mktemp("wheel")
    tree = _checkout_copy(base / "dx")
    t0 = time.monotonic()
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base / "wheels"),
                            str(tree)], capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}"
    wheels = sorted((base / "wheels").glob("dxbuild-*.whl"))
    assert len(wheels) == 1, wheels
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in _fresh_env(venv, base / "home").items() if k != "DX_ROOT"}
    py = str(venv / "bin" / "python")
    inst = subprocess.run([py, "-m", "pip", "install", "-q", str(wheels[0])], env=env, capture_output=True,
                          text=True, timeout=1800)
    assert inst.returncode == 0, f"pip install of the wheel failed:\n{inst.stdout[-3000:]}\n{inst.stderr[-3000:]}"
    away = base / "elsewhere"   # no checkout here, above or beside
    away.mkdir()
    t1 = time.monotonic()
    minted = subprocess.run([str(venv / "bin" / "dxbuild"), "--model", "smollm2", "-o", str(away / "out")],
                            cwd=away, env=env, capture_output=True, text=True, timeout=3600,
                            stdin=subprocess.DEVNULL)
    t2 = time.monotonic()
    print(f"\nwheel: build+install {t1 - t0:.1f} s, mint {t2 - t1:.1f} s (exit {minted.returncode})")
    return {"wheel": wheels[0], "venv": venv, "env": env, "away": away, "minted": minted}


def test_wheel_carries_every_package_and_data_file(wheel_mint: dict[str, object]) -> None:
    with zipfile.ZipFile(str(wheel_mint["wheel"])) as z:
        names = set(z.namelist())
    missing = [n for n in _shipped_data() if n not in names]
    assert not missing, f"data files missing from the wheel: {missing}"
    packages = subprocess.run(["git", "ls-files", "*__init__.py"], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=60).stdout.split()
    folders = {"runtime": "dx", "builder": "dxbuild", "verify": "dxverify", "matrix": "dxmatrix", **DATA}
    expected = [folders[p.split("/", 1)[0]] + "/" + p.split("/", 1)[1] for p in packages
                if p.split("/", 1)[0] in folders]
    assert not [n for n in expected if n not in names], "packages missing from the wheel"


def test_installed_wheel_mints_and_answers(wheel_mint: dict[str, object]) -> None:
    res = wheel_mint["minted"]
    assert isinstance(res, subprocess.CompletedProcess)
    tail = f"\n--- stdout ---\n{res.stdout[-3000:]}\n--- stderr ---\n{res.stderr[-5000:]}"
    assert res.returncode == 0, f"dxbuild from the installed wheel failed (exit {res.returncode}){tail}"
    for bad in ("internal error", "Traceback (most recent call last)"):
        assert bad not in res.stderr, f"{bad!r} in the output{tail}"
    env = wheel_mint["env"]
    assert isinstance(env, dict)
    where = subprocess.run([str(Path(str(wheel_mint["venv"])) / "bin" / "python"), "-c",
                            "import dxbuild, dxrecipes; print(dxbuild.__file__); print(dxrecipes.__file__)"],
                           cwd=str(wheel_mint["away"]), env=env, capture_output=True, text=True, timeout=60)
    assert all("site-packages" in line for line in where.stdout.split()), where.stdout  # not the checkout
    exes = sorted((Path(str(wheel_mint["away"])) / "out").glob("dx-smollm2-cpu-linux-*[!n]"))  # not the .json
    assert len(exes) == 1 and os.access(exes[0], os.X_OK), f"{exes}{tail}"
    exe = exes[0]
    run = subprocess.run([str(exe), "run", "Why is the sky blue?"], cwd=str(wheel_mint["away"]), env=env,
                         capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, f"{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    assert len(re.findall(r"[A-Za-z]{3,}", run.stdout)) >= 5, f"no answer: {run.stdout!r} {run.stderr[-2000:]!r}"
