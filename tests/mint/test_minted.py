"""The minted executable, for real: mint smollm2 for cpu, move it somewhere fresh, run it.

Uses the session fixtures ``minted_smollm2`` / ``mint_release_dir`` (a real
`dxbuild --gpu cpu --model smollm2` with the cached engine and bundle) and the
real `openai` and `ollama` clients.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.files import flip_byte

from dxverify.trailer import TRAILER_SIZE, read_trailer

pytestmark = pytest.mark.integration

EXE_NAME = "dx-smollm2-cpu-linux-x86_64"


# --------------------------------------------------------------------------- helpers
class Running:
    """A minted executable started with no arguments in a fresh HOME; stopped on exit."""

    def __init__(self, exe: Path, home: Path, *args: str, extra_env: dict[str, str] | None = None) -> None:
        self.exe = exe
        self.home = home
        self.tmp = home / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.env = fresh_env(home)
        self.env.update(extra_env or {})
        self.proc = subprocess.Popen([str(exe), *args], cwd=exe.parent, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.url = ""
        self.key: str | None = None
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip("\n"))
            if line.startswith("dx: serving ") and " on http://" in line:
                self.url = line.split(" on ", 1)[1].strip()
            if line.startswith("dx: API key "):
                self.key = line.split()[3]
                break
            if line.startswith("dx: no API key"):
                break
        if not self.url:
            self.stop()
            raise AssertionError("the executable did not start serving:\n" + "\n".join(self.lines))
        import threading

        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fresh_env(home: Path) -> dict[str, str]:
    """An environment that knows nothing of this machine's DX: new HOME, TMPDIR, no cache overrides."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DX_", "XDG_", "NUITKA_", "PYTHON", "OLLAMA_", "OPENAI_"))}
    env.update(HOME=str(home), TMPDIR=str(home / "tmp"), DX_PORT="0")
    return env


def engine_pids(exe: Path) -> list[int]:
    """llama-server processes whose model argument is ``exe`` (FILE#offset=N)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"llama-server") and any(str(exe).encode() in a for a in argv):
            pids.append(int(d.name))
    return pids


def mapped_files(pid: int) -> set[str]:
    out = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            out.add(parts[5].removesuffix(" (deleted)"))
    return out


def big_files(root: Path, at_least: int) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_size >= at_least]


def copy_fresh(minted: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The executable copied into a new folder, and a new HOME for it."""
    where = tmp_path / "elsewhere"
    where.mkdir()
    exe = where / minted.name
    shutil.copy2(minted, exe)
    home = tmp_path / "home"
    home.mkdir()
    return exe, home


# --------------------------------------------------------------------------- tests
def test_minted_file_layout(minted_smollm2: Path, smollm2_gguf: Path) -> None:
    em = read_trailer(minted_smollm2)
    assert minted_smollm2.name == EXE_NAME
    assert os.access(minted_smollm2, os.X_OK)
    assert em.offset % (64 * 1024) == 0
    assert em.length == smollm2_gguf.stat().st_size
    assert em.metadata["model"] == "smollm2" and em.metadata["tier"] == "cpu"
    assert len(em.metadata["llama_cpp_commit"]) == 40
    assert em.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    with open(minted_smollm2, "rb") as f, open(smollm2_gguf, "rb") as g:
        f.seek(em.offset)
        assert f.read(1 << 20) == g.read(1 << 20)  # the GGUF, unchanged
    assert em.file_size == minted_smollm2.stat().st_size == em.offset + em.length + len(
        __import__("json").dumps(em.metadata, sort_keys=True, separators=(",", ":"))) + TRAILER_SIZE


def test_end_to_end_fresh_home_openai_ollama_zero_copy(minted_smollm2: Path, tmp_path: Path) -> None:
    """Fresh folder + fresh HOME; no arguments serves; both clients answer; the model is mmapped in place."""
    import ollama
    import openai

    exe, home = copy_fresh(minted_smollm2, tmp_path)
    model_len = read_trailer(exe).length
    with Running(exe, home) as run:
        assert run.key, "an API key must be generated on first start"
        client = openai.OpenAI(base_url=run.url + "/v1", api_key=run.key, timeout=120)
        chat = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Say hello in one word."}], max_tokens=16)
        assert chat.choices[0].message.content.strip()

        oc = ollama.Client(host=run.url, headers={"Authorization": f"Bearer {run.key}"}, timeout=120)
        gen = oc.generate(model="smollm2", prompt="The capital of France is", options={"num_predict": 8})
        assert gen["response"].strip()

        pids = engine_pids(exe)
        assert len(pids) == 1, f"expected one engine serving {exe}, found {pids}"
        maps = mapped_files(pids[0])
        assert str(exe) in maps, "the engine must mmap the model straight out of the executable"
        for path in maps:  # nothing else the engine maps is big enough to be the model
            p = Path(path)
            if p.is_file() and path != str(exe):
                assert p.stat().st_size < model_len, f"engine maps {path}, as large as the model"
        for root in (home, home / ".cache", run.tmp):
            assert big_files(root, model_len) == [], f"a model-sized file appeared under {root}"
    assert run.proc.returncode is not None


def test_verify_passes_on_the_minted_executable(minted_smollm2: Path, tmp_path: Path) -> None:
    exe, home = copy_fresh(minted_smollm2, tmp_path)
    for cmd in ([str(exe), "verify", str(exe)], [sys.executable, "-m", "dx", "verify", str(exe)],
                [str(exe), "verify"]):  # the README's `./dist/dx-smollm2-… verify`: no PATH, itself
        res = subprocess.run(cmd, capture_output=True, text=True, env=fresh_env(home), timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "b179c9523d0e6a0f" in res.stdout + res.stderr


def test_verify_in_the_release_dir_checks_runtime_model_and_whole_file(mint_release_dir: Path) -> None:
    exe = mint_release_dir / EXE_NAME
    assert (mint_release_dir / "SHA256SUMS").is_file()
    res = subprocess.run([sys.executable, "-m", "dx", "verify", str(exe)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SHA-256 matches the metadata" in res.stdout  # the runtime part
    assert "matches SHA256SUMS" in res.stdout  # the whole file
    assert "'smollm2'" in res.stdout


def test_flipped_runtime_byte_is_caught_by_verify(minted_smollm2: Path, tmp_path: Path) -> None:
    exe, _home = copy_fresh(minted_smollm2, tmp_path)
    flip_byte(exe, read_trailer(exe).metadata["runtime_size"] // 2)
    res = subprocess.run([sys.executable, "-m", "dx", "verify", str(exe)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 4 and "the runtime" in res.stderr, res.stdout + res.stderr


def test_help_and_version_work_from_the_executable(minted_smollm2: Path, tmp_path: Path) -> None:
    exe, home = copy_fresh(minted_smollm2, tmp_path)
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=fresh_env(home), timeout=120)
    assert res.returncode == 0 and "serve" in res.stdout and "verify" in res.stdout
    res = subprocess.run([str(exe), "version"], capture_output=True, text=True, env=fresh_env(home), timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("dx ")
    # It knows its own model: list, doctor, and run with nothing on stdin (no "Missing argument 'MODEL'").
    res = subprocess.run([str(exe), "list"], capture_output=True, text=True, env=fresh_env(home), timeout=120)
    row = res.stdout.splitlines()[1].split()
    assert res.returncode == 0 and row[0] == "smollm2" and row[4] == "Q4_1" and row[-1] == "embedded", res.stdout
    res = subprocess.run([str(exe), "doctor", "--json"], capture_output=True, text=True, env=fresh_env(home),
                         timeout=120)
    assert res.returncode == 0 and json.loads(res.stdout)["model"]["model"] == "smollm2", res.stdout + res.stderr
    res = subprocess.run([str(exe), "run"], capture_output=True, text=True, env=fresh_env(home), timeout=120,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 2 and "nothing on stdin and no PROMPT" in res.stderr, res.stderr
    assert "Missing argument" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_run_prompt_answers_with_the_embedded_model(minted_smollm2: Path, tmp_path: Path) -> None:
    """The README's command: `./dx-smollm2-cpu-linux-x86_64 run "Why is the sky blue?"`."""
    exe, home = copy_fresh(minted_smollm2, tmp_path)
    res = subprocess.run([str(exe), "run", "Why is the sky blue?", "--max-tokens", "24", "--seed", "1"],
                         capture_output=True, text=True, env=fresh_env(home), timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(res.stdout.split()) >= 3, res.stdout
    assert engine_pids(exe) == []  # the engine it started is gone with it


def test_flipped_model_byte_refuses_to_serve(minted_smollm2: Path, tmp_path: Path) -> None:
    exe, home = copy_fresh(minted_smollm2, tmp_path)
    em = read_trailer(exe)
    flip_byte(exe, em.offset + em.length - 4096)  # deep in the tensor data: only the hash can see it
    res = subprocess.run([str(exe)], capture_output=True, text=True, env=fresh_env(home), timeout=300)
    assert res.returncode == 4, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert "does not match its recorded SHA-256" in res.stderr and str(exe) in res.stderr
    assert engine_pids(exe) == []
    res = subprocess.run([str(exe), "verify", str(exe)], capture_output=True, text=True, env=fresh_env(home),
                         timeout=300)
    assert res.returncode == 4 and "mismatch" in (res.stdout + res.stderr).lower()


def test_flip_after_first_start_is_still_caught(minted_smollm2: Path, tmp_path: Path) -> None:
    """The SHA-256 is cached after the first start, keyed by (path, size, mtime, inode): an edit invalidates it."""
    exe, home = copy_fresh(minted_smollm2, tmp_path)
    env = fresh_env(home)
    ok = subprocess.run([str(exe), "verify", str(exe)], capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0
    em = read_trailer(exe)
    flip_byte(exe, em.offset + em.length // 2)
    res = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode in (3, 4) and "Traceback" not in res.stderr, res.stderr
    assert "embedded model" in res.stderr


def test_truncated_executable_is_a_clear_error(minted_smollm2: Path, tmp_path: Path) -> None:
    exe, home = copy_fresh(minted_smollm2, tmp_path)
    em = read_trailer(exe)
    with open(exe, "r+b") as f:  # keep the trailer, lose part of the model: sizes no longer add up
        data_tail = (f.seek(em.file_size - TRAILER_SIZE - 4096), f.read())[1]
        f.truncate(em.offset + em.length // 2)
        f.seek(0, os.SEEK_END)
        f.write(data_tail)
    res = subprocess.run([str(exe)], capture_output=True, text=True, env=fresh_env(home), timeout=120)
    assert res.returncode == 3, res.stderr
    assert "truncated" in res.stderr and "Traceback" not in res.stderr


def test_executable_cut_short_does_not_start(minted_smollm2: Path, tmp_path: Path) -> None:
    """Cut in the middle of the runtime itself: the onefile bootstrap refuses; nothing runs."""
    exe, home = copy_fresh(minted_smollm2, tmp_path)
    with open(exe, "r+b") as f:
        f.truncate(read_trailer(exe).offset // 2)
    res = subprocess.run([str(exe)], capture_output=True, text=True, env=fresh_env(home), timeout=120)
    assert res.returncode != 0


def test_random_file_named_like_an_executable(tmp_path: Path) -> None:
    bogus = tmp_path / EXE_NAME
    bogus.write_bytes(os.urandom(300_000))
    bogus.chmod(0o755)
    res = subprocess.run([sys.executable, "-m", "dx", "verify", str(bogus)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert "no DX trailer" in res.stderr or "not" in res.stderr
    with pytest.raises(OSError, match="Exec format error"):  # the kernel refuses it: not an executable at all
        subprocess.run([str(bogus)], capture_output=True, timeout=60)


def test_half_unpacked_runtime_is_repaired(minted_smollm2: Path, tmp_path: Path) -> None:
    """A first start killed mid-unpack leaves partial files; Nuitka's cached mode checks each file's CRC-32."""
    exe, home = copy_fresh(minted_smollm2, tmp_path)
    env = fresh_env(home)
    assert subprocess.run([str(exe), "version"], env=env, capture_output=True, timeout=120).returncode == 0
    run_dirs = list((home / ".cache" / "dx" / "run").iterdir())
    assert len(run_dirs) == 1
    server = run_dirs[0] / "engine" / "bin" / "llama-server"
    size = server.stat().st_size
    with open(server, "r+b") as f:
        f.truncate(size // 3)
    victim = next(p for p in run_dirs[0].rglob("*.so") if p.is_file())
    victim.unlink()
    res = subprocess.run([str(exe), "version"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert server.stat().st_size == size and victim.is_file()


def test_mint_again_reuses_engine_and_bundle(mint_release_dir: Path, tmp_path: Path) -> None:
    """Same inputs: the engine and bundle come from the cache; no compiler runs (shims would record it)."""
    import time

    shims = tmp_path / "shims"
    shims.mkdir()
    record = tmp_path / "compilers-run"
    for tool in ("gcc", "cc", "g++", "c++", "clang", "cmake", "ninja", "ccache", "ld", "scons"):
        real = shutil.which(tool)
        # Version queries (the engine's cache key includes toolchain versions) reach the real tool;
        # anything else is a compile: recorded, and refused.
        passthrough = f'exec {real} "$@"' if real else "exit 1"
        shim = shims / tool
        shim.write_text(
            "#!/bin/sh\n"
            'case " $* " in *" --version "*|*" -dumpversion "*|*" -dumpfullversion "*|*" -dumpmachine "*)\n'
            f"  {passthrough};;\nesac\n"
            f'echo "{tool} $*" >> {record}\nexit 1\n')
        shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{shims}:{os.environ['PATH']}")
    out = tmp_path / "again"
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "dxbuild", "--gpu", "cpu", "--model", "smollm2", "--no-bench",
                          "-o", str(out)],
                         capture_output=True, text=True, env=env, timeout=900)
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert "cache hit" in res.stderr
    assert "reused from the cache" in res.stderr
    assert not record.exists(), f"a compiler ran: {record.read_text()}"
    assert took < 120, f"a cached mint took {took:.0f}s"  # a real compile takes minutes on this machine
    first = mint_release_dir / EXE_NAME
    assert (out / EXE_NAME).read_bytes() == first.read_bytes()  # same inputs, same bytes
    assert res.stdout.splitlines()[0] == str(out / EXE_NAME)
    assert "sha256" in res.stdout and "size" in res.stdout


def test_pull_in_the_executable_resumes_after_a_kill(minted_smollm2: Path, smollm2_gguf: Path, tmp_path: Path) -> None:
    """`dx pull hf:…` from the executable (built without huggingface_hub: dx.registry.huggingface), killed
    mid-download, then run again: the second run asks only for the missing bytes and stores the
    verified model."""
    import hashlib
    import signal
    import time

    from support.hub_server import FakeHub

    exe, home = copy_fresh(minted_smollm2, tmp_path)
    hub = FakeHub()
    slow = hub.add("pub/big", "m.gguf", smollm2_gguf, fault="slow", delay=0.05)
    hub.start()
    env = fresh_env(home)
    env["HF_ENDPOINT"] = hub.url
    try:
        first = subprocess.Popen([str(exe), "pull", "hf:pub/big/m.gguf"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        partials: list[Path] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            partials = [p for p in (home / ".dx").rglob("*.partial") if p.stat().st_size > 20 << 20]
            if partials:
                break
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        assert partials, "the first pull never got 20 MiB in"
        have = partials[0].stat().st_size
        slow.fault = None
        res = subprocess.run([str(exe), "pull", "hf:pub/big/m.gguf"], env=env, capture_output=True, text=True,
                             timeout=300)
    finally:
        hub.stop()
    assert res.returncode == 0, res.stdout + res.stderr
    ranges = [r for _m, _p, r in hub.gets("m.gguf")]
    assert ranges[0] is None and ranges[-1] is not None
    assert int(ranges[-1].removeprefix("bytes=").rstrip("-")) >= have
    sha = hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest()
    assert [p.name for p in (home / ".dx").rglob(f"sha256-{sha}") if p.parent.name == "blobs"] == [f"sha256-{sha}"]
    assert not list((home / ".dx").rglob("*.partial"))


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _serving(exe: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``exe serve`` (the embedded model, loaded at start) with SIGINT as a terminal would deliver it."""
    import signal

    proc = subprocess.Popen([str(exe), "serve", "--no-auth", "--port", "0"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:  # type: ignore[union-attr]
        if line.startswith("dx: no API key"):
            return proc
    proc.kill()
    raise AssertionError(f"the executable did not start serving (exit {proc.wait()})")


@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGINT", 0), ("SIGKILL", -9)])
def test_one_process_that_takes_signals_itself_and_leaves_no_engine(minted_smollm2: Path, tmp_path: Path,
                                                                     sig: str, code: int) -> None:
    """Issue #24: the onefile bootstrap execs the unpacked program (no idle parent), so the PID a shell,
    systemd or this test started is dx itself: it gets the signal, exits with its own status, and its
    engine goes with it (SIGKILL included: the parent-death signal)."""
    import signal
    import time

    exe, home = copy_fresh(minted_smollm2, tmp_path)
    proc = _serving(exe, fresh_env(home))
    try:
        assert Path(f"/proc/{proc.pid}/exe").resolve().name == "dx.bin", "the started PID is not dx itself"
        deadline = time.monotonic() + 120
        while not engine_pids(exe) and time.monotonic() < deadline:
            time.sleep(0.2)
        engines = engine_pids(exe)
        assert len(engines) == 1
        kids = _children(proc.pid)
        assert engines[0] in kids or any(engines[0] in _children(k) for k in kids)

        def dx_children() -> list[int]:  # a fork on its way to exec (the engine's watchdog) is dx.bin for a moment
            return [k for k in _children(proc.pid) if Path(f"/proc/{k}/exe").resolve().name == "dx.bin"]

        deadline = time.monotonic() + 10
        while dx_children() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert dx_children() == [], "a second dx process"
        proc.send_signal(getattr(signal, sig))
        assert proc.wait(timeout=30) == code
        deadline = time.monotonic() + 10
        while engine_pids(exe) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert engine_pids(exe) == [], f"the engine outlived dx after {sig}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
