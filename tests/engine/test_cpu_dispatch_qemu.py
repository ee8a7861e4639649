"""x86 CPU-variant dispatch, proven: the one cpu engine (GGML_CPU_ALL_VARIANTS) run under
``qemu-x86_64 -cpu MODEL`` loads the variant built for that CPU and answers on SmolLM2.

qemu-user emulates the CPU's instruction set (and its CPUID), so an older model
really lacks AVX, AVX2 or AVX-512: ggml must pick by what CPUID says, and the
variant it picks must run there. Needs Debian's qemu-user-static (test.sh installs it).
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
from support.engine_run import chat, complete, loaded_cpu_variant, serve
from support.tools import need

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(platform.machine() != "x86_64", reason="the x86 variants exist on x86_64 only")]

#: qemu CPU model -> the ggml variant it must get (ggml/src/CMakeLists.txt's list, best score that fits)
EXPECTED = {
    "Nehalem": "sse42",            # SSE4.2, no AVX
    "SandyBridge": "sandybridge",  # + AVX, no F16C/AVX2
    "Haswell": "haswell",          # + AVX2, FMA, F16C, BMI2
    # QEMU 7.2's TCG (Debian 12) emulates no AVX-512: an emulated Skylake-Server has AVX2 but
    # no AVX-512F, so it must get haswell, not skylakex (which would die of SIGILL there).
    # The AVX-512 variants are proven natively below, on a host that has AVX-512.
    "Skylake-Server": "haswell",
}

#: AVX-512 variants, best first, with the CPU flags (/proc/cpuinfo names) each needs
AVX512_VARIANTS = [
    ("sapphirerapids", {"avx512f", "avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"}),
    ("zen4", {"avx512f", "avx512vbmi", "avx512_vnni", "avx512_bf16"}),
    ("cooperlake", {"avx512f", "avx512_vnni", "avx512_bf16"}),
    ("icelake", {"avx512f", "avx512vbmi", "avx512_vnni"}),
    ("cascadelake", {"avx512f", "avx512_vnni"}),
    ("cannonlake", {"avx512f", "avx512vbmi"}),
    ("skylakex", {"avx512f"}),
]


def _qemu() -> str:
    return need("qemu-x86_64-static", "qemu-x86_64", package="qemu-user-static")


@pytest.mark.parametrize("cpu", list(EXPECTED))
def test_variant_dispatch_under_qemu(cpu: str, cpu_engine: Path, smollm2_gguf: Path, tmp_path: Path) -> None:
    log = tmp_path / f"llama-server-{cpu}.log"
    argv = [_qemu(), "-cpu", cpu, str(cpu_engine / "bin" / "llama-server"), "-m", str(smollm2_gguf),
            "-c", "512", "-t", "2", "-np", "1", "-v"]   # -v: the "loaded CPU backend" line
    with serve(argv, log) as (_proc, url):
        text = complete(url)   # a few tokens: emulated, the engine decodes at ~0.3 tokens/s here
    variant = loaded_cpu_variant(log.read_text())
    assert variant == EXPECTED[cpu], f"-cpu {cpu}: loaded {variant!r}, want {EXPECTED[cpu]!r}"
    assert "paris" in text.lower(), text


def test_native_avx512_host_gets_an_avx512_variant(cpu_engine: Path, smollm2_gguf: Path, tmp_path: Path) -> None:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if "avx512f" not in flags:
        pytest.skip("this host has no AVX-512")
    want = next(name for name, need in AVX512_VARIANTS if need <= flags)
    log = tmp_path / "llama-server-native.log"
    argv = [str(cpu_engine / "bin" / "llama-server"), "-m", str(smollm2_gguf), "-c", "512", "-t", "2", "-np", "1",
            "-v"]
    with serve(argv, log) as (_proc, url):
        text = chat(url, max_tokens=8)
    assert loaded_cpu_variant(log.read_text()) == want
    assert "paris" in text.lower(), text
