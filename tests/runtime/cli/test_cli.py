"""The dx model commands as users run them: a real `python -m dx` subprocess, isolated DX_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.hub_server import FakeHub
from support.waits import wait_until

SMOL_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {**os.environ, "DX_HOME": str(tmp_path / "dxhome"), "OLLAMA_MODELS": str(tmp_path / "no-ollama"),
         "HF_HOME": str(tmp_path / "hf"), "DX_HOST": ""}
    for k in ("DX_DEBUG", "HF_HUB_OFFLINE", "HF_ENDPOINT", "DX_API_KEY"):
        e.pop(k, None)
    return e


def dx(*args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dx", *args], capture_output=True, text=True, env=env,
                          input="" if stdin is None else stdin, timeout=timeout)


def one_line_error(r: subprocess.CompletedProcess[str], code: int, *needles: str, progress: bool = False) -> None:
    """Exit ``code``, the error in one line (after pull's progress lines, when ``progress``), no traceback."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("dx: ")]
    assert len(errors) == 1 and errors[0].startswith("dx: error: ") and errors[0] == lines[-1], r.stderr
    assert progress or len(lines) == 1, r.stderr
    for n in needles:
        assert n in errors[0], errors[0]


def test_import_list_show_cp_rm(env: dict[str, str], smollm2_gguf: Path) -> None:
    r = dx("pull", str(smollm2_gguf), "--name", "smollm2", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"smollm2:latest  sha256:{SMOL_SHA}")
    r = dx("list", env=env)
    assert r.returncode == 0, r.stderr
    header, row = r.stdout.strip().splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "QUANT", "MODIFIED", "SOURCE"]
    assert row.split()[:5] == ["smollm2:latest", SMOL_SHA[:12], "98.4", "MB", "Q4_1"]
    doc = json.loads(dx("list", "--json", env=env).stdout)
    assert doc[0]["sha256"] == SMOL_SHA and doc[0]["family"] == "llama"
    r = dx("show", "smollm2", env=env)
    assert "architecture      llama" in r.stdout and "quantization      Q4_1" in r.stdout
    meta = json.loads(dx("show", "smollm2", "--json", env=env).stdout)
    assert meta["metadata"]["llama.block_count"] == 30 and meta["facts"]["context_length"] == 8192
    assert "<|im_start|>" in dx("show", "smollm2", "--template", env=env).stdout
    r = dx("show", str(smollm2_gguf), env=env)  # a path works too, verified first
    assert r.returncode == 0 and f"sha256            {SMOL_SHA}" in r.stdout, r.stderr
    assert dx("cp", "smollm2", "smol:v2", env=env).returncode == 0
    assert [m["name"] for m in json.loads(dx("list", "--json", env=env).stdout)] == ["smol:v2", "smollm2:latest"]
    r = dx("rm", "smollm2", "smol:v2", env=env)
    assert r.stdout.splitlines() == ["deleted smollm2:latest", "deleted smol:v2"]
    assert json.loads(dx("list", "--json", env=env).stdout) == []
    assert list((Path(env["DX_HOME"]) / "models" / "blobs").iterdir()) == []


def test_store_errors_are_one_line(env: dict[str, str], tmp_path: Path) -> None:
    one_line_error(dx("show", "nothing", env=env), 2, "no model named 'nothing:latest'", "dx list")
    one_line_error(dx("rm", "nothing", env=env), 2, "no model named")
    one_line_error(dx("cp", "nothing", "x", env=env), 2)
    one_line_error(dx("pull", "hf:owner/repo", env=env), 2, "hf:OWNER/REPO/FILE.gguf")
    one_line_error(dx("show", "a/../../etc/passwd:x", env=env), 2, "invalid model name")
    one_line_error(dx("show", "/etc/passwd", env=env), 3, "malformed GGUF")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    one_line_error(dx("pull", str(bad), env=env), 3, "bad.gguf")
    one_line_error(dx("pull", str(tmp_path / "missing.gguf"), env=env), 2, "no GGUF file")


@pytest.mark.integration
def test_pull_from_a_hub_over_hf_endpoint(env: dict[str, str], smollm2_gguf: Path) -> None:
    hub = FakeHub()
    hub.add("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", FILE, smollm2_gguf, fault="drop_first")
    hub.add("broken/model", FILE, smollm2_gguf, fault="corrupt")
    hub.start()
    try:
        env = {**env, "HF_ENDPOINT": hub.url}
        spec = f"hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/{FILE}"
        r = dx("pull", spec, env=env)
        assert r.returncode == 0, r.stderr
        assert "success" in r.stderr and SMOL_SHA in r.stdout
        assert "hf.co/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:SmolLM2-135M-Instruct.Q4_1" in dx("list", env=env).stdout
        r = dx("pull", "hf:broken/model/" + FILE, env=env)
        one_line_error(r, 4, "hf:broken/model/" + FILE, "expected " + SMOL_SHA, progress=True)
        # Offline, with the Hub gone: the pulled model is still there, the other is a clear error.
        hub.stop()
        off = {**env, "HF_HUB_OFFLINE": "1"}
        assert dx("pull", spec, env=off).returncode == 0
        one_line_error(dx("pull", "hf:other/repo/" + FILE, env=off), 2, "HF_HUB_OFFLINE", progress=True)
    finally:
        hub.stop()


def test_ps_without_a_server_is_one_line(env: dict[str, str]) -> None:
    one_line_error(dx("ps", "--host", "127.0.0.1:9", env=env), 8, "no dx server at http://127.0.0.1:9")


def test_run_errors_are_one_line(env: dict[str, str], smollm2_gguf: Path, tmp_path: Path) -> None:
    one_line_error(dx("run", "nothing", "hi", env=env), 2, "no model named 'nothing:latest'")
    corrupt = tmp_path / "corrupt.gguf"
    data = bytearray(smollm2_gguf.read_bytes()[: 1 << 20])
    data[8:16] = (2**40).to_bytes(8, "little")  # tensor count far beyond the file
    corrupt.write_bytes(bytes(data))
    r = dx("run", str(corrupt), "hi", env=env)
    one_line_error(r, 3, "corrupt.gguf")
    r = dx("run", str(smollm2_gguf), "hi", env={**env, "DX_ENGINE": str(tmp_path / "no-engine")})
    one_line_error(r, 2, "DX_ENGINE")
    one_line_error(dx("run", str(smollm2_gguf), env=env, stdin=""), 2, "no PROMPT")
    one_line_error(dx("run", "x", "hi", "--host", "ftp://nope", env=env), 2, "http://")


def test_host_and_size_formatting() -> None:
    from dx.cli.chat import normalize_host
    from dx.cli.models import human_age, human_size

    assert normalize_host("127.0.0.1") == "http://127.0.0.1:11434"
    assert normalize_host("localhost:8080") == "http://localhost:8080"
    assert normalize_host("https://example.com/") == "https://example.com:11434"
    assert normalize_host("http://[::1]:9000") == "http://[::1]:9000"
    assert normalize_host("[::1]") == "http://[::1]:11434"
    assert (human_size(98362432), human_size(512), human_size(4_700_000_000)) == ("98.4 MB", "512 B", "4.7 GB")
    assert (human_age(1000, now=1030), human_age(0, now=7200), human_age(0, now=86400)) == (
        "just now", "2 hours ago", "1 day ago")


def test_list_shows_ollama_models_read_only(env: dict[str, str], smollm2_gguf: Path, tmp_path: Path) -> None:
    from support.ollama_tree import make_ollama_tree

    make_ollama_tree(Path(env["OLLAMA_MODELS"]), smollm2_gguf)
    r = dx("list", env=env)
    assert r.returncode == 0, r.stderr
    assert "smollm2:135m" in r.stdout and "ollama (read-only)" in r.stdout
    one_line_error(dx("rm", "smollm2:135m", env=env), 2, "ollama rm smollm2:135m")


@pytest.mark.integration
def test_a_pull_killed_mid_download_leaves_nothing_in_the_store(env: dict[str, str], smollm2_gguf: Path) -> None:
    import signal

    hub = FakeHub()
    slow = hub.add("slow/repo", FILE, smollm2_gguf, fault="slow")
    hub.start()
    try:
        env = {**env, "HF_ENDPOINT": hub.url}
        proc = subprocess.Popen([sys.executable, "-m", "dx", "pull", f"hf:slow/repo/{FILE}"], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        models = Path(env["DX_HOME"]) / "models"

        def a_few_mib_in() -> bool:
            assert proc.poll() is None, f"dx pull exited ({proc.returncode}) before it was killed"
            return any(p.stat().st_size >= 4 << 20 for p in (models / "downloads").rglob("*.incomplete"))

        wait_until(a_few_mib_in, "dx pull to have written 4 MiB of the model")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for d in (models / "blobs", models / "manifests"):
            assert not d.exists() or list(d.iterdir()) == []
        partial = list((models / "downloads").rglob("*.incomplete"))
        assert partial and all(p.stat().st_size < smollm2_gguf.stat().st_size for p in partial)
        # The next pull removes the orphaned partial, completes (huggingface_hub starts the file afresh)
        # and is verified.
        slow.fault = None
        r = dx("pull", f"hf:slow/repo/{FILE}", env=env)
        assert r.returncode == 0, r.stderr
        assert SMOL_SHA in r.stdout
        assert not list((models / "downloads").rglob("*.incomplete"))
    finally:
        hub.stop()
