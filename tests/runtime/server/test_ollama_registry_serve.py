"""Registry models through `dx serve` and the real engine, with the real `ollama` client.

The remote registry is the loopback fake of ollama_registry_server.py; the
server, the store, the engine and the client are the real ones.
"""

from __future__ import annotations

from pathlib import Path

import ollama
import pytest
from support.ollama_registry_server import FakeRegistry
from support.serve_harness import DXServer, engine_binary, start_dx

from dx.models.catalog import Store

pytestmark = pytest.mark.integration

SMOL_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
COUNT = "Count from 1 to 30, separated by commas: 1, 2, 3, 4,"


@pytest.fixture(scope="module")
def registry(smollm2_gguf: Path):  # type: ignore[no-untyped-def]
    r = FakeRegistry()
    data = smollm2_gguf.read_bytes()
    # The params layer as Ollama publishes them: sampling defaults and stop strings.
    r.add_model("library/smolstop", "135m", data, params={"stop": [" 9,"], "temperature": 0, "num_ctx": 2048},
                template="{{ .Prompt }}", licenses=("Apache License 2.0",))
    r.add_model("library/smolplain", "135m", data, params={"temperature": 0})
    r.start()
    yield r
    r.stop()
    assert r.auth_leaks == []


def test_ollama_client_pull_streams_progress_from_dx_serve(tmp_path: Path, registry: FakeRegistry,
                                                          smollm2_gguf: Path) -> None:
    dx = start_dx(tmp_path, "--no-auth", env={"DX_OLLAMA_REGISTRY": registry.url})
    try:
        oll = ollama.Client(host=dx.url)
        events = list(oll.pull("smolstop:135m", stream=True))
        statuses = [e.status for e in events]
        assert statuses[-1] == "success"
        assert any(s.startswith("pulling manifest") for s in statuses)
        sizes = [(e.completed, e.total) for e in events if e.status == "downloading"]
        assert len(sizes) >= 2 and sizes[-1] == (smollm2_gguf.stat().st_size,) * 2
        assert "smolstop:135m" in [m.model for m in oll.list().models]
        n = len(registry.cdn_log)
        assert [e.status for e in oll.pull("smolstop:135m", stream=True)][-1] == "success"
        assert len(registry.cdn_log) == n  # up to date: the manifest was asked for, no blob
        with pytest.raises(ollama.ResponseError):
            list(oll.pull("nothere:1b", stream=True))
        assert oll.pull("smolplain:135m", stream=False).status == "success"
    finally:
        dx.stop()
    entry = Store(dx.home, ollama_dir=False).get("smolstop:135m")
    assert entry.sha256 == SMOL_SHA and (entry.registry or {})["params"]["stop"] == [" 9,"]


def _served(tmp_path: Path, registry: FakeRegistry, engine: Path) -> DXServer:
    dx = start_dx(tmp_path, "--no-auth", engine=engine, env={"DX_OLLAMA_REGISTRY": registry.url})
    oll = ollama.Client(host=dx.url)
    for model in ("smolstop:135m", "smolplain:135m"):
        assert oll.pull(model, stream=False).status == "success"
    return dx


def test_a_stop_string_from_the_params_layer_ends_the_generation(
    tmp_path: Path, registry: FakeRegistry, request: pytest.FixtureRequest
) -> None:
    dx = _served(tmp_path, registry, engine_binary(request))
    try:
        oll = ollama.Client(host=dx.url)
        plain = oll.generate(model="smolplain:135m", prompt=COUNT, raw=True, options={"num_predict": 48})
        # the same model without the stop string counts on past 9
        assert " 9," in plain.response and " 12," in plain.response, plain.response
        stopped = oll.generate(model="smolstop:135m", prompt=COUNT, raw=True, options={"num_predict": 48})
        assert stopped.done and stopped.done_reason == "stop"
        assert " 8" in stopped.response and " 9," not in stopped.response and "10" not in stopped.response
        # the engine got the params layer as its defaults (num_ctx 2048 per slot); a request's own stop wins
        argvs = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in dx.children()]
        mine = next(a for a in argvs if b"smolstop:135m" in a)
        assert mine[mine.index(b"-r") + 1] == b" 9," and mine[mine.index(b"--temp") + 1] == b"0.0"
        assert int(mine[mine.index(b"-c") + 1]) % 2048 == 0
        own = oll.generate(model="smolstop:135m", prompt=COUNT, raw=True,
                           options={"num_predict": 48, "stop": [" 6,"]})
        assert " 5" in own.response and " 6," not in own.response
    finally:
        dx.stop()


def test_dxbuild_mints_a_registry_model(tmp_path: Path, smollm2_gguf: Path, cpu_engine: Path) -> None:
    """`dxbuild --model NAME:TAG` against the loopback registry: the real mint, Nuitka bundle included."""
    import hashlib
    import os
    import platform
    import subprocess
    import sys

    from dxverify.trailer import find_trailer

    # SmolLM2 with one metadata byte changed (same length, structure intact): a digest no cache holds yet,
    # so the mint downloads it over the registry protocol.
    data = smollm2_gguf.read_bytes()
    assert data.count(b"Hugging Face") >= 1
    data = data.replace(b"Hugging Face", b"Hugging Fade", 1)
    digest = hashlib.sha256(data).hexdigest()
    from dxbuild.paths import cache_dir

    (cache_dir() / "models" / f"sha256-{digest}").unlink(missing_ok=True)  # this test's own blob, from a last run
    r = FakeRegistry()
    r.add_model("library/smolmint", "135m", data, params={"stop": ["\n\n"]}, licenses=("Apache License 2.0",))
    r.start()
    try:
        env = {**os.environ, "DX_OLLAMA_REGISTRY": r.url, "OLLAMA_MODELS": str(tmp_path / "no-ollama")}
        out = tmp_path / "dist"
        res = subprocess.run([sys.executable, "-m", "dxbuild", "--gpu", "cpu", "--model", "smolmint:135m",
                              "--no-bench", "-o", str(out)], env=env, capture_output=True, text=True, timeout=1800)
        assert res.returncode == 0, res.stdout + res.stderr
        assert any(rng.startswith("bytes=0-") for rng in r.cdn_ranges(digest) if rng)  # over the registry
    finally:
        r.stop()
    exe = out / f"dx-smolmint-135m-cpu-linux-{platform.machine()}"
    em = find_trailer(exe)
    assert em is not None and em.sha256 == digest
    assert em.metadata["model"] == "smolmint:135m"
    assert em.metadata["source"] == "ollama:registry.ollama.ai/library/smolmint:135m"
    # the params layer travels in the trailer, so the executable's engine gets its stop strings
    assert em.metadata["defaults"]["params"] == {"stop": ["\n\n"]}
    from dx.models.defaults import for_source
    from dx.models.source import ModelSource

    assert for_source(ModelSource(path=exe, offset=em.offset, length=em.length)).stop == ["\n\n"]
    check = subprocess.run([str(exe), "verify"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "HOME": str(tmp_path), "DX_HOME": str(tmp_path / "dxhome")})
    assert check.returncode == 0, check.stdout + check.stderr


def test_dx_run_uses_the_system_layer_as_the_default_system_prompt(
    tmp_path: Path, smollm2_gguf: Path, request: pytest.FixtureRequest
) -> None:
    """Greedy decoding, same engine and prompt: the output with the model's system layer equals the
    output of the same GGUF without one given that text as --system, and differs from it without."""
    import os
    import subprocess
    import sys

    system = "You are a pirate. Every answer starts with Arr and is about the sea."
    r = FakeRegistry()
    data = smollm2_gguf.read_bytes()
    r.add_model("library/smolsys", "135m", data, params={"temperature": 0}, system=system)
    r.add_model("library/smolnosys", "135m", data, params={"temperature": 0})
    r.start()
    env = {**os.environ, "DX_HOME": str(tmp_path / "home"), "HOME": str(tmp_path / "home"),
           "OLLAMA_MODELS": str(tmp_path / "no-ollama"), "DX_OLLAMA_REGISTRY": r.url,
           "DX_ENGINE": str(engine_binary(request))}

    def run(*args: str) -> str:
        p = subprocess.run([sys.executable, "-m", "dx", "run", *args, "--max-tokens", "16", "--seed", "1"],
                           env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
        return p.stdout

    try:
        with_layer = run("smolsys:135m", "Who are you?")
        plain = run("smolnosys:135m", "Who are you?")
        given = run("smolnosys:135m", "Who are you?", "--system", system)
    finally:
        r.stop()
    assert with_layer == given != plain


def test_the_system_layer_is_the_default_system_prompt_on_the_ollama_api(
    tmp_path: Path, smollm2_gguf: Path, request: pytest.FixtureRequest
) -> None:
    """/api/chat and /api/generate without a system message get the model's system layer, as in Ollama;
    a request's own system message wins (greedy, same engine: equal to giving that text by hand)."""
    system = "You are a pirate. Every answer starts with Arr and is about the sea."
    r = FakeRegistry()
    data = smollm2_gguf.read_bytes()
    r.add_model("library/smolsys", "135m", data, params={"temperature": 0}, system=system)
    r.add_model("library/smolnosys", "135m", data, params={"temperature": 0})
    r.start()
    dx = start_dx(tmp_path, "--no-auth", engine=engine_binary(request), env={"DX_OLLAMA_REGISTRY": r.url})
    try:
        oll = ollama.Client(host=dx.url)
        for model in ("smolsys:135m", "smolnosys:135m"):
            assert oll.pull(model, stream=False).status == "success"
        opts = {"temperature": 0, "seed": 1, "num_predict": 16}
        user = {"role": "user", "content": "Who are you?"}

        def chat(model: str, *messages: dict[str, str]) -> str:
            return oll.chat(model=model, messages=list(messages), options=opts).message.content or ""

        with_layer = chat("smolsys:135m", user)
        given = chat("smolnosys:135m", {"role": "system", "content": system}, user)
        plain = chat("smolnosys:135m", user)
        assert with_layer == given != plain
        own = chat("smolsys:135m", {"role": "system", "content": "You are a librarian."}, user)
        assert own == chat("smolnosys:135m", {"role": "system", "content": "You are a librarian."}, user)
        gen = oll.generate(model="smolsys:135m", prompt="Who are you?", options=opts).response
        assert gen == oll.generate(model="smolnosys:135m", prompt="Who are you?", system=system,
                                   options=opts).response
    finally:
        dx.stop()
        r.stop()
