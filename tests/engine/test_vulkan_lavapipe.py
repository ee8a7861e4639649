"""The vulkan tier, built and run here on lavapipe (Mesa's CPU Vulkan driver), for real.

Engine (with DX's header-compat patch) → llama-server on the Vulkan backend →
a minted ``dxbuild --gpu vulkan --model smollm2`` executable answering the real
``openai`` client → the same executable with no Vulkan driver visible falls back
to the CPU and says so in one line → greedy decoding equals the cpu tier's (or
the first divergence is a near-tie, reported with its logit gap).

Marked ``vulkan``: the cold engine build is tens of minutes on 2 cores, so it runs
with DX_TEST_VULKAN=1 (cached afterwards like the cpu engine; see README).
Needs Debian's glslc, libvulkan-dev, spirv-headers and mesa-vulkan-drivers (test.sh installs them).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from smoke_executable import ask, serving
from support.engine_run import complete, serve
from support.tools import missing

pytestmark = [pytest.mark.integration, pytest.mark.vulkan]

#: what upstream llama.cpp's own Vulkan CI sets for lavapipe; without VISIBLE_DEVICES
#: ggml skips CPU-type Vulkan devices, and lavapipe is one
LAVAPIPE = {"GGML_VK_VISIBLE_DEVICES": "0", "GGML_VK_DISABLE_F16": "1", "GGML_VK_DISABLE_COOPMAT": "1"}
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
]
N_PREDICT = 32
#: a divergence between backends is accepted only at a near-tie: the cpu tier's top two
#: candidates within this many logits (float rounding differs between backends)
NEAR_TIE_LOGITS = 0.5


def _need_lavapipe() -> None:
    from dxbuild.toolchains.run_here import vulkan_icds

    if not any("lvp" in Path(p).name for p in vulkan_icds()):
        missing("the lavapipe Vulkan ICD", "mesa-vulkan-drivers")


@pytest.fixture(scope="module")
def vulkan_engine() -> Path:
    from dxbuild.engine.build import host_engine

    _need_lavapipe()
    return host_engine("vulkan")


@pytest.fixture(scope="module")
def vulkan_exe(tmp_path_factory: pytest.TempPathFactory, vulkan_engine: Path, smollm2_gguf: Path) -> Path:
    """The README's command: dxbuild --gpu vulkan --model smollm2 (engine and bundle from the cache)."""
    import platform

    out = tmp_path_factory.mktemp("mint-vulkan")
    r = subprocess.run([sys.executable, "-m", "dxbuild", "--gpu", "vulkan", "--model", "smollm2", "--no-bench",
                        "-o", str(out)], capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stdout + r.stderr
    exe = out / f"dx-smollm2-vulkan-linux-{platform.machine()}"
    assert exe.is_file(), sorted(p.name for p in out.iterdir())
    return exe


def _offloaded(log: str) -> tuple[int, int]:
    m = re.search(r"offloaded (\d+)/(\d+) layers to GPU", log)
    assert m, "the engine's log has no offload line"
    return int(m.group(1)), int(m.group(2))


def test_engine_carries_the_vulkan_backend_and_its_patch(vulkan_engine: Path) -> None:
    info = json.loads((vulkan_engine / "engine.json").read_text())
    assert [p["file"] for p in info["patches"]] == ["0001-load-gguf-at-file-offset.patch",
                                                    "0004-stream-opening-and-waiter-deadline.patch",
                                                    "0002-vulkan-without-layer-settings-ext.patch"]
    assert info["cmake_flags"]["GGML_VULKAN"] == "ON"
    assert (vulkan_engine / "bin" / "libggml-vulkan.so").is_file()
    assert list((vulkan_engine / "bin").glob("libggml-cpu-*.so")), "a Vulkan engine keeps the CPU variants"
    needed = subprocess.run(["readelf", "-d", str(vulkan_engine / "bin" / "libggml-vulkan.so")],
                            capture_output=True, text=True).stdout
    assert "libvulkan.so.1" in needed, "the system Vulkan loader, not a copy"


def test_llama_server_offloads_every_layer_to_lavapipe(vulkan_engine: Path, smollm2_gguf: Path,
                                                      tmp_path: Path) -> None:
    import os

    log = tmp_path / "llama-server.log"
    argv = [str(vulkan_engine / "bin" / "llama-server"), "-m", str(smollm2_gguf), "-c", "512", "-np", "1",
            "-ngl", "99", "-v"]
    with serve(argv, log, env={**os.environ, **LAVAPIPE}) as (_proc, url):
        text = complete(url)
    body = log.read_text(errors="replace")
    assert re.search(r"using device Vulkan0 \(llvmpipe", body), "the Vulkan device is lavapipe's llvmpipe"
    done, total = _offloaded(body)
    assert done == total > 0, f"offloaded {done}/{total}"
    assert "paris" in text.lower(), text


def _engine_maps(exe: Path) -> str:
    """/proc/PID/maps of the llama-server serving ``exe``'s embedded model (FILE#offset=N)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"llama-server") and any(str(exe).encode() in a for a in argv):
            return (d / "maps").read_text()
    raise AssertionError(f"no llama-server is serving {exe}")


def test_minted_vulkan_executable_serves_openai_on_lavapipe(vulkan_exe: Path, tmp_path: Path) -> None:
    import openai

    with serving(vulkan_exe, env=LAVAPIPE, home=tmp_path / "home") as run:
        client = openai.OpenAI(base_url=run.url + "/v1", api_key=run.key or "none", timeout=600)
        model = client.models.list().data[0].id
        chat = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "What is the capital of France? One word."}],
            max_tokens=8, temperature=0)
        answer = chat.choices[0].message.content or ""
        maps = _engine_maps(vulkan_exe)
        output = list(run.output)
    assert "paris" in answer.lower(), answer
    said = [line for line in output if line.startswith("dx: the engine ")]
    assert len(said) == 1 and re.match(r"dx: the engine runs on Vulkan0: llvmpipe", said[0]), output
    assert "libggml-vulkan.so" in maps, "the engine loaded ggml's Vulkan backend"
    assert "libvulkan_lvp.so" in maps, "and lavapipe's driver: the model runs through Vulkan"


def test_without_a_vulkan_driver_it_runs_on_the_cpu_and_says_so_once(vulkan_exe: Path, tmp_path: Path) -> None:
    env = {**LAVAPIPE, "VK_ICD_FILENAMES": "/nonexistent.json", "VK_DRIVER_FILES": "/nonexistent.json"}
    with serving(vulkan_exe, env=env, home=tmp_path / "home") as run:
        answer = ask(run, max_tokens=8)
        output = list(run.output)
    said = [line for line in output if "running on the CPU" in line]
    assert said == ["dx: the engine found no Vulkan device; running on the CPU"], output
    assert "paris" in answer.lower(), answer


def _greedy(url: str, prompt: str) -> list[dict]:
    r = httpx.post(f"{url}/completion", timeout=1200, json={
        "prompt": prompt, "n_predict": N_PREDICT, "temperature": 0, "seed": 1234, "n_probs": 5,
        "ignore_eos": True, "cache_prompt": False})
    assert r.status_code == 200, r.text
    probs = r.json()["completion_probabilities"]
    assert len(probs) == N_PREDICT
    return probs


def _gap(entry: dict, other_id: int) -> float:
    """How far, in logits, ``other_id`` was behind the token chosen at this position (inf: not a top candidate).

    A log-probability difference is the logit difference (softmax shifts all logits alike).
    """
    top = entry.get("top_logprobs") or entry.get("top_probs") or []
    logp = {t["id"]: (t["logprob"] if "logprob" in t else math.log(max(t["prob"], 1e-30))) for t in top}
    if not top or other_id not in logp:
        return math.inf
    return float(max(logp.values()) - logp[other_id])


def test_greedy_decoding_equals_the_cpu_tier(vulkan_engine: Path, cpu_engine: Path, smollm2_gguf: Path,
                                             tmp_path: Path) -> None:
    import os

    common = ["-m", str(smollm2_gguf), "-c", "1024", "-np", "1", "-t", "2"]
    runs: dict[str, list[list[dict]]] = {}
    for name, engine, extra, env in (("cpu", cpu_engine, [], dict(os.environ)),
                                     ("vulkan", vulkan_engine, ["-ngl", "99"], {**os.environ, **LAVAPIPE})):
        with serve([str(engine / "bin" / "llama-server"), *common, *extra], tmp_path / f"{name}.log",
                   env=env) as (_p, url):
            runs[name] = [_greedy(url, p) for p in PROMPTS]
    report = []
    for prompt, cpu, vk in zip(PROMPTS, runs["cpu"], runs["vulkan"], strict=True):
        ids_cpu, ids_vk = [e["id"] for e in cpu], [e["id"] for e in vk]
        if ids_cpu == ids_vk:
            report.append(f"{prompt!r}: {N_PREDICT}/{N_PREDICT} tokens equal")
            continue
        i = next(k for k, (a, b) in enumerate(zip(ids_cpu, ids_vk, strict=True)) if a != b)
        gap = _gap(cpu[i], vk[i]["id"])
        report.append(f"{prompt!r}: {i} tokens equal, then cpu {cpu[i]['token']!r} vs vulkan {vk[i]['token']!r}: "
                      f"the cpu tier had vulkan's token {gap:.3f} logits behind its own")
        assert gap < NEAR_TIE_LOGITS, "\n".join(report)
    print("\n".join(report))
