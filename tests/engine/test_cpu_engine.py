"""The real cpu engine, built through the cpu_engine fixture: layout, and serving SmolLM2
from a plain file and from an offset inside a larger file (mmapped in place)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.engine_run import chat, free_port, serve

pytestmark = pytest.mark.integration

ALIGN = 64 * 1024


@contextlib.contextmanager
def llama_server(engine: Path, model_arg: str, log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The engine's llama-server on a free loopback port; (process, base URL) once healthy."""
    with serve([str(engine / "bin" / "llama-server"), "-m", model_arg, "-c", "1024", "-t", "2", "-np", "1"],
               log, ready_s=120) as running:
        yield running


def _chat(url: str) -> str:
    return chat(url, max_tokens=24, timeout=120)


def test_engine_layout(cpu_engine: Path) -> None:
    info = json.loads((cpu_engine / "engine.json").read_text())
    assert info["tier"] == "cpu" and info["key"].startswith(cpu_engine.name.rsplit("-", 1)[1])
    assert info["llama_cpp_commit"] == "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
    assert [p["file"] for p in info["patches"]] == ["0001-load-gguf-at-file-offset.patch",
                                                    "0004-stream-opening-and-waiter-deadline.patch"]
    assert info["cmake_flags"]["GGML_BACKEND_DL"] == "ON"
    for rel, sha in info["files"].items():
        assert (cpu_engine / rel).is_file(), rel
        assert len(sha) == 64
    server = cpu_engine / "bin" / "llama-server"
    assert os.access(server, os.X_OK) and os.access(cpu_engine / "bin" / "llama-bench", os.X_OK)
    assert list((cpu_engine / "bin").glob("libggml-cpu-*.so")), "CPU variants sit next to the executable"
    assert list((cpu_engine / "lib").glob("libllama.so*"))
    dyn = subprocess.run(["readelf", "-d", str(server)], capture_output=True, text=True).stdout
    assert "$ORIGIN/../lib" in dyn
    sections = subprocess.run(["readelf", "-S", str(server)], capture_output=True, text=True).stdout
    assert ".symtab" not in sections, "installed binaries are stripped"
    ldd = subprocess.run(["ldd", str(server)], capture_output=True, text=True).stdout
    assert "not found" not in ldd
    assert (f"{cpu_engine}/bin/../lib/libllama-server-impl.so" in ldd
            or f"{cpu_engine}/lib/libllama-server-impl.so" in ldd), ldd


def test_cache_hit_returns_same_dir(cpu_engine: Path) -> None:
    from dxbuild.engine.build import host_engine

    seen: list[str] = []
    again = host_engine("cpu", echo=seen.append)
    assert again == cpu_engine
    assert any("cache hit" in s for s in seen), seen
    assert not list(cpu_engine.parent.glob(f".{cpu_engine.name}.tmp-*"))


def test_serves_plain_file(cpu_engine: Path, smollm2_gguf: Path, tmp_path: Path) -> None:
    with llama_server(cpu_engine, str(smollm2_gguf), tmp_path / "server.log") as (_proc, url):
        text = _chat(url)
    assert "paris" in text.lower()


def test_serves_from_offset_mmapped_in_place(cpu_engine: Path, smollm2_gguf: Path, tmp_path: Path) -> None:
    big = tmp_path / "dx-executable-with-model"
    prefix = os.urandom(3 * ALIGN)               # stands in for the Nuitka onefile part
    suffix = os.urandom(10_000)                  # stands in for metadata + trailer
    with open(big, "wb") as f:
        f.write(prefix)
        with open(smollm2_gguf, "rb") as m:
            while chunk := m.read(1 << 20):
                f.write(chunk)
        f.write(suffix)
    offset = len(prefix)
    assert offset % ALIGN == 0
    log = tmp_path / "server.log"
    with llama_server(cpu_engine, f"{big}#offset={offset}", log) as (proc, url):
        text = _chat(url)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
    assert "paris" in text.lower()
    mapped = [line for line in maps.splitlines() if line.endswith(str(big))]
    assert mapped, "the executable file itself is mmapped (no copy of the model)"
    assert not any(line.endswith(str(smollm2_gguf)) for line in maps.splitlines())
    assert f"#offset={offset}" in log.read_text()


def test_unaligned_offset_is_refused_not_misread(cpu_engine: Path, smollm2_gguf: Path, tmp_path: Path) -> None:
    big = tmp_path / "unaligned"
    big.write_bytes(b"x" * 7 + smollm2_gguf.read_bytes())
    r = subprocess.run([str(cpu_engine / "bin" / "llama-server"), "-m", f"{big}#offset=7", "--port",
                        str(free_port()), "--host", "127.0.0.1"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "not 32 byte aligned, cannot mmap" in r.stdout + r.stderr


def test_bench_runs(cpu_engine: Path, smollm2_gguf: Path) -> None:
    r = subprocess.run([str(cpu_engine / "bin" / "llama-bench"), "-m", str(smollm2_gguf), "-p", "16", "-n", "8",
                        "-r", "1", "-t", "2", "-o", "json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(r.stdout)
    assert results and all(x["avg_ts"] > 0 for x in results)


def test_cli_prints_engine_dir_on_cache_hit(cpu_engine: Path) -> None:
    import sys

    r = subprocess.run([sys.executable, "-m", "dxbuild", "engine", "--tier", "cpu"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(cpu_engine)
    assert "cache hit" in r.stderr
    js = subprocess.run([sys.executable, "-m", "dxbuild", "engine", "--tier", "cpu", "--json"],
                        capture_output=True, text=True, timeout=120)
    assert json.loads(js.stdout)["key"] == json.loads((cpu_engine / "engine.json").read_text())["key"]
