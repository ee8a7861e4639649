"""Differential test against llama.cpp's own parser: whatever gguf.cpp rejects, DX rejects too.

Inputs: every test-gguf.cpp kind (10 seeds each), every truncation of a small
model, and thousands of randomly damaged copies. Each goes to
``gguf_init_from_file`` of the engine's libggml-base (in a subprocess) and to
``dxverify.gguf``. DX may be stricter (it also checks what llama.cpp only finds
at model load), never looser.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from support.gguf_handcraft import tiny_model
from test_gguf_testgguf_kinds import ACCEPTED, REJECTED, craft

from dxverify.gguf import GGUFError, read_gguf

pytestmark = pytest.mark.integration
PROBE = Path(__file__).with_name("llama_gguf_probe.py")


def inputs() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for kind in [*REJECTED, *ACCEPTED]:
        for seed in range(10):
            out[f"{kind.lower()}-{seed}"] = craft(kind, seed)
    valid = tiny_model().build()
    for n in range(len(valid.data)):
        out[f"trunc-{n}"] = valid.data[:n]
    rng = random.Random(99)
    header_end = valid.fields["data"][0]
    for i in range(3000):
        data = bytearray(valid.data)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(header_end)] = rng.choice([0, 1, 0xFF, rng.randrange(256)])
        out[f"damage-{i}"] = bytes(data)
    return out


def llama_cpp_verdicts(lib: Path, paths: list[Path]) -> dict[Path, str]:
    """'accept' / 'reject' / 'crash' for each path; a crash restarts the probe after that input."""
    verdicts: dict[Path, str] = {}
    todo = list(paths)
    while todo:
        r = subprocess.run([sys.executable, PROBE, lib], input="\n".join(map(str, todo)) + "\n",
                           capture_output=True, text=True, errors="replace", timeout=600)  # fmt: skip
        # ggml logs its complaints to stdout too: keep only the probe's own lines
        answers = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("@@verdict ")]
        for path, a in zip(todo, answers, strict=False):
            verdicts[path] = "accept" if a == "1" else "reject"
        if len(answers) >= len(todo):
            break
        verdicts[todo[len(answers)]] = "crash"
        todo = todo[len(answers) + 1 :]
    return verdicts


def dx_rejects(path: Path) -> bool:
    try:
        read_gguf(path).close()
    except GGUFError:
        return True
    return False


def test_dx_rejects_everything_llama_cpp_rejects(cpu_engine: Path, tmp_path: Path) -> None:
    libs = sorted((cpu_engine / "lib").glob("libggml-base.so*"))
    assert libs, f"no libggml-base in {cpu_engine / 'lib'}"
    paths = []
    for name, data in inputs().items():
        p = tmp_path / name
        p.write_bytes(data)
        paths.append(p)
    verdicts = llama_cpp_verdicts(libs[0], paths)
    looser = [p.name for p in paths if verdicts[p] != "accept" and not dx_rejects(p)]
    assert not looser, f"llama.cpp rejects but DX accepts: {looser[:20]}"
    stricter = sum(1 for p in paths if verdicts[p] == "accept" and dx_rejects(p))
    crashes = [p.name for p in paths if verdicts[p] == "crash"]
    n_rejected = sum(1 for p in paths if verdicts[p] != "accept")
    print(f"{len(paths)} inputs: llama.cpp rejects {n_rejected}, DX rejects all of those "
          f"and {stricter} more; llama.cpp crashed on {len(crashes)}: {crashes[:5]}")  # fmt: skip
    # the corrupt test-gguf kinds must all be rejected by both
    for p in paths:
        kind = p.name.rsplit("-", 1)[0].upper()
        if kind in REJECTED and not kind.startswith(
            ("TENSORS_ZERO_DIM", "TENSORS_SUCCESS", "TENSORS_CUSTOM")
        ):
            assert verdicts[p] != "accept", f"llama.cpp accepted {p.name}: the port of test-gguf is off"
