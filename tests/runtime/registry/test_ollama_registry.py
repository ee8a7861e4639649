"""`dx pull NAME` from Ollama's registry: real HTTP on loopback against a fake of the remote registry.

The fake (ollama_registry_server.py) serves Ollama's manifest shapes with the
real SmolLM2 GGUF as the model layer, and redirects blob requests (307) to a
second loopback server standing in for the CDN, which refuses any request
carrying credentials. Everything else is DX's real code: the stdlib client,
the store, the verifier.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.ollama_registry_server import FakeRegistry, media
from support.waits import wait_until

from dx.errors import ModelNotFoundError
from dx.models.catalog import Store
from dx.registry import ollama as reg
from dx.registry.huggingface import DownloadError
from dxverify.errors import ConfigurationError, IntegrityError

SMOL_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
LLAMA32_MANIFEST = Path(__file__).resolve().parents[2] / "support" / "data" / "llama3.2-3b.manifest.json"
PARAMS = {"stop": ["<|im_end|>", "<|endoftext|>"], "temperature": 0.3, "top_k": 20, "num_ctx": 1024}
SYSTEM = "You are a terse assistant."
TEMPLATE = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ .Prompt }}"
LICENSE = "Apache License\nVersion 2.0, January 2004\n"


@pytest.fixture(scope="module")
def smol_bytes(smollm2_gguf: Path) -> bytes:
    return smollm2_gguf.read_bytes()


@pytest.fixture
def registry(smol_bytes: bytes):  # type: ignore[no-untyped-def]
    r = FakeRegistry()
    r.add_model("library/smoltest", "135m", smol_bytes, params=PARAMS, template=TEMPLATE, system=SYSTEM,
                licenses=(LICENSE,))
    r.add_model("dxtest/smolbare", "latest", smol_bytes)
    r.start()
    yield r
    r.stop()
    assert r.auth_leaks == [], "credentials reached the CDN"


@pytest.fixture
def env(registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch) -> FakeRegistry:
    monkeypatch.setenv("DX_OLLAMA_REGISTRY", registry.url)
    monkeypatch.delenv("DX_OLLAMA_TOKEN", raising=False)
    monkeypatch.delenv("DX_PULL_PARTS", raising=False)
    return registry


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "dxhome", ollama_dir=False)


def stored(store: Store) -> list[str]:
    out = []
    for d in (store.blobs, store.manifests, store.tmp):
        if d.is_dir():
            out += [str(p.relative_to(store.models)) for p in d.iterdir()]
    return sorted(out)


def partials(store: Store) -> list[str]:
    d = store.downloads / "registry"
    return sorted(p.name for p in d.iterdir() if p.suffix != ".lock") if d.is_dir() else []  # locks stay, empty


# ---- names and manifests ----------------------------------------------------------------------


@pytest.mark.parametrize("text, full, short", [
    ("llama3.2", "registry.ollama.ai/library/llama3.2:latest", "llama3.2:latest"),
    ("llama3.2:3b", "registry.ollama.ai/library/llama3.2:3b", "llama3.2:3b"),
    ("jmorgan/tiny:q4", "registry.ollama.ai/jmorgan/tiny:q4", "jmorgan/tiny:q4"),
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
     "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"),
    ("localhost:5000/ns/m:v1", "localhost:5000/ns/m:v1", "localhost:5000/ns/m:v1"),
])
def test_names_parse_as_ollama_does(text: str, full: str, short: str) -> None:
    n = reg.parse_registry_name(text)
    assert (str(n), n.short) == (full, short)


@pytest.mark.parametrize("bad", ["a/b/c/d", "", "llama3.2:", "../x", "m:t/x:y", "a b"])
def test_bad_names_are_one_line_errors(bad: str) -> None:
    with pytest.raises(ConfigurationError) as ei:
        reg.parse_registry_name(bad)
    assert "\n" not in str(ei.value)


def test_the_published_llama32_manifest_parses_and_hashes_to_its_digest() -> None:
    """llama3.2:3b's manifest as published (see data/README.md): the digest the recipe pins is its SHA-256."""
    m = reg.Manifest.parse(LLAMA32_MANIFEST.read_bytes(), "llama3.2:3b")
    assert m.sha256 == "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72"
    model = m.model_layer("llama3.2:3b")
    assert model.sha256 == "dde5aa3fc5ffc17176b5e8bdc82f587b24b2678c6c66101bf7da77af9f7ccdff"
    assert model.size == 2_019_377_376
    assert [ly.kind for ly in m.layers] == ["model", "template", "license", "license", "params"]
    from dxbuild.models import load_model_recipes

    r = load_model_recipes()["llama3.2"]
    assert (r.source, r.manifest_sha256, r.sha256, r.size) == ("ollama", m.sha256, model.sha256, model.size)


# ---- pulls ----------------------------------------------------------------------------------


def test_pull_verifies_every_layer_and_records_the_manifest(store: Store, env: FakeRegistry,
                                                            smol_bytes: bytes) -> None:
    events: list[tuple[str, int | None, int | None]] = []
    entry = store.pull("smoltest:135m", progress=lambda *e: events.append(e))
    assert entry.name == "smoltest:135m" and entry.sha256 == SMOL_SHA
    assert entry.source == "registry:registry.ollama.ai/library/smoltest:135m"
    assert (store.blobs / f"sha256-{SMOL_SHA}").read_bytes() == smol_bytes
    raw = env.manifests[("library/smoltest", "135m")]
    doc = entry.registry or {}
    assert doc["manifest_digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert doc["params"] == PARAMS and doc["system"] == SYSTEM and doc["template"] == TEMPLATE
    assert doc["licenses"] == [LICENSE]
    assert [ly["mediaType"] for ly in doc["layers"]] == [media(k) for k in ("model", "template", "system",
                                                                             "license", "params")]
    # the record survives a reload from disk, and a copy keeps it
    assert Store(store.root, ollama_dir=False).get("smoltest:135m").registry == doc
    assert store.copy("smoltest:135m", "mine").registry == doc
    # the manifest was asked for with Docker's media type; blobs went through the redirect, in parts
    assert reg.MANIFEST_TYPE in (env.registry_log[0]["accept"] or "")
    assert len(env.cdn_ranges(SMOL_SHA)) == min(4, len(smol_bytes) // reg.PART_MIN)
    assert events[-1] == ("success", entry.size, entry.size)
    assert any(s == "downloading" and c == len(smol_bytes) for s, c, _ in events)
    assert partials(store) == []


def test_second_pull_is_up_to_date_and_fetches_only_the_manifest(store: Store, env: FakeRegistry) -> None:
    store.pull("smoltest:135m")
    n_cdn, n_reg = len(env.cdn_log), len(env.registry_log)
    events: list[tuple[str, int | None, int | None]] = []
    store.pull("smoltest:135m", progress=lambda *e: events.append(e))
    assert len(env.cdn_log) == n_cdn and len(env.registry_log) == n_reg + 1
    assert events[-1][0] == "success (up to date)"


def test_run_pulls_a_missing_name_first_and_then_resolves_from_the_store(store: Store, env: FakeRegistry) -> None:
    src = store.resolve("dxtest/smolbare")
    assert src.sha256 == SMOL_SHA and src.name == "dxtest/smolbare:latest"
    n = len(env.registry_log)
    assert store.resolve("dxtest/smolbare").path == src.path
    assert len(env.registry_log) == n  # no network for a model already here
    with pytest.raises(ModelNotFoundError, match=r"no model named 'nope:latest'.*not found at") as ei:
        store.resolve("nope")
    assert "\n" not in str(ei.value)


def test_token_is_sent_to_the_registry_only_never_across_the_redirect(
    store: Store, env: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.token = "s3cret"
    with pytest.raises(DownloadError) as ei:
        store.pull("smoltest:135m")
    msg = str(ei.value)
    assert "asks for a token" in msg and "DX_OLLAMA_TOKEN" in msg and "\n" not in msg
    assert env.registry_log[0]["authorization"] is None  # anonymous first
    assert stored(store) == []
    monkeypatch.setenv("DX_OLLAMA_TOKEN", "s3cret")
    assert store.pull("smoltest:135m").sha256 == SMOL_SHA
    assert env.registry_log[-1]["authorization"] == "Bearer s3cret"
    assert env.cdn_log and all(r["authorization"] is None for r in env.cdn_log)
    assert env.auth_leaks == []
    monkeypatch.setenv("DX_OLLAMA_TOKEN", "wrong")
    with pytest.raises(DownloadError, match="refused the token"):
        store.pull("smoltest:135m")


def test_digest_mismatch_stores_nothing_and_names_the_layer(store: Store, env: FakeRegistry) -> None:
    env.corrupt.add(SMOL_SHA)
    with pytest.raises(IntegrityError, match=f"smoltest:135m: the model layer has SHA-256 .*expected {SMOL_SHA}"):
        store.pull("smoltest:135m")
    assert stored(store) == [] or all(not p.startswith(("blobs/", "manifests/")) for p in stored(store))
    assert partials(store) == []  # the partial was deleted, not kept for a resume
    # a small layer that lies is refused the same way, before the big one is fetched
    env.corrupt.clear()
    tmpl = next(h for h, d in env.blobs.items() if d == TEMPLATE.encode())
    env.corrupt.add(tmpl)
    n = len(env.cdn_ranges(SMOL_SHA))
    with pytest.raises(IntegrityError, match="the template layer has SHA-256"):
        store.pull("smoltest:135m")
    assert len(env.cdn_ranges(SMOL_SHA)) == n


def test_missing_model_and_unreachable_registry_are_one_line_errors(
    store: Store, env: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ModelNotFoundError, match="nothere:latest not found at"):
        store.pull("nothere")
    monkeypatch.setenv("DX_OLLAMA_REGISTRY", "http://127.0.0.1:9")
    with pytest.raises(DownloadError) as ei:
        store.pull("smoltest:135m")
    assert "\n" not in str(ei.value) and "127.0.0.1:9" in str(ei.value)
    assert stored(store) == []


@pytest.mark.parametrize("parts", [1, 2, 4])
def test_parallel_parts_reassemble_byte_exactly(env: FakeRegistry, tmp_path: Path, smol_bytes: bytes,
                                               parts: int) -> None:
    name = reg.parse_registry_name("smoltest:135m")
    layer = reg.fetch_manifest(name).model_layer("x")
    got = reg.download_blob(name, layer, tmp_path, parts=parts)
    assert got.read_bytes() == smol_bytes
    ranges = env.cdn_ranges(SMOL_SHA)
    assert len(ranges) == parts
    starts = sorted(int(r.split("=")[1].split("-")[0]) for r in ranges if r)
    assert starts[0] == 0 and len(set(starts)) == parts
    assert not (tmp_path / f"sha256-{SMOL_SHA}.state.json").exists()


def test_a_stalled_part_is_dropped_and_asked_again(env: FakeRegistry, tmp_path: Path, smol_bytes: bytes,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DX_PULL_STALL_S", "1")
    env.stall_once.add(SMOL_SHA)
    name = reg.parse_registry_name("smoltest:135m")
    layer = reg.fetch_manifest(name).model_layer("x")
    t0 = time.monotonic()
    got = reg.download_blob(name, layer, tmp_path, parts=1)
    assert got.read_bytes() == smol_bytes and time.monotonic() - t0 < 20
    ranges = env.cdn_ranges(SMOL_SHA)
    assert len(ranges) == 2 and int(ranges[1].split("=")[1].split("-")[0]) > 0  # resumed, not restarted


_PULL_CHILD = """
import sys
from dx.models.catalog import Store
Store(sys.argv[1], ollama_dir=False).pull("smoltest:135m")
"""


def test_a_pull_killed_mid_blob_resumes_where_it_stopped(
    store: Store, env: FakeRegistry, smol_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.delay = 0.05  # 1 MiB every 50 ms per part: the kill lands mid-blob
    state = store.downloads / "registry" / f"sha256-{SMOL_SHA}.state.json"
    child_env = {**os.environ, "DX_OLLAMA_REGISTRY": env.url, "DX_PULL_PARTS": "2"}
    proc = subprocess.Popen([sys.executable, "-c", _PULL_CHILD, str(store.root)], env=child_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def eight_mib_in() -> bool:
            assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
            return sum(p[2] for p in json.loads(state.read_text())["parts"]) > 8 << 20  # OSError, ValueError: not yet

        wait_until(eight_mib_in, "the pull's saved state to show 8 MiB downloaded")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert stored(store) == [] or all(not p.startswith(("blobs/", "manifests/")) for p in stored(store))
    saved = json.loads(state.read_text())["parts"]
    assert len(saved) == 2 and 0 < sum(p[2] for p in saved) < len(smol_bytes)
    env.delay = 0.0
    before = len(env.cdn_log)
    events: list[tuple[str, int | None, int | None]] = []
    entry = store.pull("smoltest:135m", progress=lambda *e: events.append(e))
    assert entry.sha256 == SMOL_SHA
    asked = sorted(r["range"] for r in env.cdn_log[before:] if r["range"])
    assert asked == sorted(f"bytes={s + d}-{e}" for s, e, d in saved if s + d <= e)
    assert any(s.startswith("resuming model layer at") for s, _, _ in events)
    assert partials(store) == []


# ---- Ollama's own store, read-only ---------------------------------------------------------------


def fake_ollama_store(root: Path, registry: FakeRegistry, repository: str, tag: str) -> Path:
    """What `ollama pull` leaves: manifests/<host>/<ns>/<model>/<tag> and blobs/sha256-<hex> (mode 0644)."""
    raw = registry.manifests[(repository, tag)]
    mdir = root / "manifests" / "registry.ollama.ai" / repository
    mdir.mkdir(parents=True)
    (mdir / tag).write_bytes(raw)
    (root / "blobs").mkdir()
    doc = json.loads(raw)
    for d in [doc["config"], *doc["layers"]]:
        hexd = d["digest"].split(":")[1]
        p = root / "blobs" / f"sha256-{hexd}"
        p.write_bytes(registry.blobs[hexd])
        p.chmod(0o644)
    return root


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    return {str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_size, p.stat().st_mtime_ns,
                                       hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_ollamas_own_blobs_are_verified_and_linked_without_network(
    tmp_path: Path, registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    ollama = fake_ollama_store(tmp_path / "ollama", registry, "library/smoltest", "135m")
    before = _snapshot(ollama)
    monkeypatch.setenv("DX_OLLAMA_REGISTRY", "http://127.0.0.1:9")  # no network: refused if asked
    store = Store(tmp_path / "dxhome", ollama_dir=ollama)
    events: list[tuple[str, int | None, int | None]] = []
    entry = store.pull("smoltest:135m", progress=lambda *e: events.append(e))
    assert entry.sha256 == SMOL_SHA and not entry.read_only and entry.name == "smoltest:135m"
    assert (entry.registry or {})["via"] == "ollama-store" and (entry.registry or {})["params"] == PARAMS
    theirs = ollama / "blobs" / f"sha256-{SMOL_SHA}"
    assert entry.path.stat().st_ino == theirs.stat().st_ino  # a hard link: no bytes copied
    assert any("using Ollama's copy" in s for s, _, _ in events)
    assert _snapshot(ollama) == before  # read-only: not a byte, mode or mtime changed
    assert registry.registry_log == [] and registry.cdn_log == []
    # Ollama's blob changed on disk behind its manifest: refused, named, nothing stored under that name
    store.delete("smoltest:135m")
    theirs.unlink()
    theirs.write_bytes(b"GGUF" + b"\0" * (before[f"blobs/sha256-{SMOL_SHA}"][1] - 4))
    theirs.chmod(0o644)
    with pytest.raises(IntegrityError, match="in Ollama's store"):
        store.pull("smoltest:135m")


# ---- the model's defaults reach the engine ------------------------------------------------------------


def test_params_become_engine_flags_and_context() -> None:
    from dx.models.defaults import ModelDefaults, from_registry

    d = from_registry({"params": {**PARAMS, "num_gpu": 99, "seed": 7, "repeat_penalty": 1.1}, "system": SYSTEM})
    args = d.engine_args()
    assert args[args.index("--temp") + 1] == "0.3" and args[args.index("--top-k") + 1] == "20"
    assert args[args.index("--seed") + 1] == "7" and args[args.index("--repeat-penalty") + 1] == "1.1"
    assert [args[i + 1] for i, a in enumerate(args) if a == "-r"] == PARAMS["stop"]
    assert "num_gpu" not in " ".join(args)
    assert d.ctx == 1024 and d.system == SYSTEM
    assert ModelDefaults({"stop": "x", "num_ctx": 10}).engine_args() == ["-r", "x"]
    assert ModelDefaults({"num_ctx": 10}).ctx is None


def test_defaults_are_found_from_the_engine_source(store: Store, env: FakeRegistry, tmp_path: Path) -> None:
    from dx.models.defaults import NONE, for_source

    src = store.resolve("smoltest:135m")
    assert for_source(src).params == PARAMS
    assert for_source(store.resolve("dxtest/smolbare")) == NONE
    ollama = fake_ollama_store(tmp_path / "ollama", env, "library/smoltest", "135m")
    theirs = Store(tmp_path / "other", ollama_dir=ollama).get("smoltest:135m")
    assert theirs.read_only
    from dx.models.source import ModelSource

    assert for_source(ModelSource(path=theirs.path, name=theirs.name)).params == PARAMS


# ---- dxbuild --model NAME:TAG (model resolution for a mint) ---------------------------------------


def test_dxbuild_resolves_registry_names_and_holds_recipes_to_their_pins(
    env: FakeRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smol_bytes: bytes
) -> None:
    from dxbuild.models import load_model_recipes, resolve

    monkeypatch.setenv("DX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-ollama"))
    got = resolve("smoltest:135m")
    assert got.name == "smoltest:135m" and got.sha256 == SMOL_SHA and got.path.read_bytes() == smol_bytes
    assert got.path == tmp_path / "cache" / "models" / f"sha256-{SMOL_SHA}"
    assert got.source == "ollama:registry.ollama.ai/library/smoltest:135m"
    assert got.registry and got.registry["params"] == PARAMS and got.registry["licenses"] == [LICENSE]
    raw = env.manifests[("library/smoltest", "135m")]
    recipes_toml = tmp_path / "models.toml"
    recipe = ('[smol]\ndescription = "x"\nlicense = "Apache-2.0"\nsource = "ollama"\nollama = "smoltest:135m"\n'
              f'manifest_sha256 = "{hashlib.sha256(raw).hexdigest()}"\nsha256 = "{SMOL_SHA}"\n'
              f"size = {len(smol_bytes)}\n")
    recipes_toml.write_text(recipe)
    recipes = load_model_recipes(recipes_toml)
    assert resolve("smol", recipes=recipes).sha256 == SMOL_SHA
    assert resolve("smoltest:135m", recipes=recipes).name == "smol"  # a pinned name is held to the recipe
    recipes_toml.write_text(recipe.replace(hashlib.sha256(raw).hexdigest(), "0" * 64))
    with pytest.raises(IntegrityError, match="the recipe pins sha256:" + "0" * 64):
        resolve("smol", recipes=load_model_recipes(recipes_toml))
    # Ollama's own copy is read in place, with no network
    ollama = fake_ollama_store(tmp_path / "ollama", env, "library/smoltest", "135m")
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama))
    monkeypatch.setenv("DX_OLLAMA_REGISTRY", "http://127.0.0.1:9")
    local = resolve("smol", recipes=recipes)
    assert local.path == ollama / "blobs" / f"sha256-{SMOL_SHA}" and local.sha256 == SMOL_SHA


# ---- the dx command line ------------------------------------------------------------------------


def _dx(tmp_path: Path, registry: FakeRegistry, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DX_HOME": str(tmp_path / "cli-home"), "OLLAMA_MODELS": str(tmp_path / "no-ollama"),
           "DX_OLLAMA_REGISTRY": registry.url}
    env.pop("DX_DEBUG", None)
    env.pop("DX_OLLAMA_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "dx", *args], env=env, capture_output=True, text=True, timeout=120)


def test_dx_pull_on_the_command_line(tmp_path: Path, registry: FakeRegistry) -> None:
    ok = _dx(tmp_path, registry, "pull", "smoltest:135m")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().startswith(f"smoltest:135m  sha256:{SMOL_SHA}")
    assert "pulling manifest" in ok.stderr and "success" in ok.stderr
    listed = _dx(tmp_path, registry, "list")
    assert "smoltest:135m" in listed.stdout and "registry" in listed.stdout
    registry.token = "t"
    refused = _dx(tmp_path, registry, "pull", "dxtest/smolbare")
    assert refused.returncode == 7 and "Traceback" not in refused.stderr
    lines = [ln for ln in refused.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and "asks for a token" in lines[0] and "DX_OLLAMA_TOKEN" in refused.stderr


def test_a_second_pull_of_the_same_blob_at_once_is_refused_not_interleaved(
    env: FakeRegistry, tmp_path: Path
) -> None:
    import fcntl

    name = reg.parse_registry_name("smoltest:135m")
    layer = reg.fetch_manifest(name).model_layer("x")
    with open(tmp_path / f"sha256-{SMOL_SHA}.lock", "a") as held:  # what a running pull holds
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(DownloadError, match="another pull is downloading the model layer"):
            reg.download_blob(name, layer, tmp_path)
    assert reg.download_blob(name, layer, tmp_path).stat().st_size == layer.size


def test_a_blob_the_registry_does_not_have_is_a_clear_error_not_a_retry_loop(
    env: FakeRegistry, tmp_path: Path
) -> None:
    name = reg.parse_registry_name("smoltest:135m")
    layer = reg.fetch_manifest(name).model_layer("x")
    orig = env.blobs.pop(SMOL_SHA)  # the manifest names a blob the registry answers 404 for
    try:
        with pytest.raises(ModelNotFoundError):
            reg.download_blob(name, layer, tmp_path, parts=2)
    finally:
        env.blobs[SMOL_SHA] = orig
    assert (tmp_path / f"sha256-{SMOL_SHA}.state.json").is_file()  # nothing verified, nothing deleted
    assert reg.download_blob(name, layer, tmp_path, parts=2).stat().st_size == layer.size
