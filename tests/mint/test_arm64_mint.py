"""`dxbuild --gpu cpu --arch aarch64 --model smollm2` on this x86_64 machine, and the file it mints
answering under qemu-user.

The engine cross-compiles; the runtime is compiled by the pinned Nuitka running under qemu in an
arm64 Debian root (dxbuild.bundle.foreign). Marked ``aarch64`` and opt-in (DX_TEST_AARCH64=1): the
first run makes the root (~10 min) and compiles under emulation (30-55 min on 2 cores); both are
cached, so a repeat with the same runtime sources is a normal mint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_minted import Running, copy_fresh

pytestmark = [pytest.mark.integration, pytest.mark.aarch64, pytest.mark.timeout(3 * 3600)]

EM_AARCH64 = 0xB7


@pytest.fixture(scope="module")
def arm64_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dxbuild.bundle.foreign import foreign_problem
    from dxbuild.toolchains.host import HOST_ARCH

    if HOST_ARCH != "x86_64":
        pytest.skip("the qemu route is for minting arm64 on x86_64")
    problem = foreign_problem("arm64")
    if problem:
        pytest.skip(problem)
    out = tmp_path_factory.mktemp("arm64-dist")
    r = subprocess.run([sys.executable, "-m", "dxbuild", "--gpu", "cpu", "--arch", "aarch64", "--model", "smollm2",
                        "-o", str(out)], capture_output=True, text=True, timeout=3 * 3600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _root() -> Path:
    """The arm64 root the runtime was compiled in: its libraries stand in for an arm64 machine's."""
    from dxbuild.bundle.foreign import SUITE, root_key
    from dxbuild.paths import cache_dir

    return cache_dir() / "roots" / f"debian-{SUITE}-arm64-{root_key('arm64')[:16]}"


def test_minted_file_is_an_arm64_executable_that_verifies(arm64_release: Path) -> None:
    exe = arm64_release / "dx-smollm2-cpu-linux-arm64"
    head = exe.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == EM_AARCH64
    facts = json.loads((arm64_release / "dx-smollm2-cpu-linux-arm64.json").read_text())
    assert (facts["os"], facts["arch"]) == ("linux", "arm64")
    r = subprocess.run([sys.executable, "-m", "dx", "verify", str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dx-smollm2-cpu-linux-arm64" in (arm64_release / "SHA256SUMS").read_text()


def test_minted_arm64_executable_serves_under_qemu(arm64_release: Path, tmp_path: Path) -> None:
    """Run as an arm64 machine would (binfmt_misc → qemu-aarch64): the real openai client gets an answer."""
    import openai

    exe, home = copy_fresh(arm64_release / "dx-smollm2-cpu-linux-arm64", tmp_path)
    # qemu-user finds the arm64 loader and libraries (libz, libstdc++) in the root, as on an arm64 Debian
    with Running(exe, home, extra_env={"QEMU_LD_PREFIX": str(_root())}) as run:
        client = openai.OpenAI(base_url=run.url + "/v1", api_key=run.key, timeout=600)
        chat = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Say hello in one word."}], max_tokens=8)
        assert chat.choices[0].message.content.strip()
        engines = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_engine_for(p, exe)]
        assert engines, "an arm64 llama-server must be serving the embedded model"


def _is_engine_for(proc: Path, exe: Path) -> bool:
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # under binfmt_misc's F flag the kernel runs qemu with the program's path as an argument
    return any(a.endswith(b"llama-server") for a in argv) and any(str(exe).encode() in a for a in argv)


def test_second_mint_reuses_the_arm64_bundle(arm64_release: Path, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "dxbuild", "--gpu", "cpu", "--arch", "aarch64", "--model", "smollm2",
                        "-o", str(tmp_path / "again"), "--no-bench"], capture_output=True, text=True, timeout=900,
                       env={**os.environ})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "reused from the cache" in r.stderr
