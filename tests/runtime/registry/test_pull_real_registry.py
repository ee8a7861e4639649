"""`dx pull` against a REAL registry (Debian's docker-registry, distribution 2.8), not only the stand-in.

The pull tests of test_ollama_registry.py, on the real server: the model is published there the
way Ollama's registry holds one (tests/support/oci_registry.py's own uploads, not DX's push), and
DX reaches it both ways a user can: ``DX_OLLAMA_REGISTRY`` (a mirror for default-host names) and a
name with the registry's host and ``--insecure`` (plain HTTP). What only a stand-in can do (a 307
to a CDN that must not see credentials, a token challenge, corrupted or stalled bytes, a slow blob
to kill a pull in) stays in test_ollama_registry.py against ollama_registry_server.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.oci_registry import OCIRegistry, media

from dx.errors import ModelNotFoundError
from dx.models.catalog import Store
from dx.registry import ollama as reg
from dx.registry.huggingface import DownloadError

SMOL_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PARAMS = {"stop": ["<|im_end|>", "<|endoftext|>"], "temperature": 0.3, "top_k": 20, "num_ctx": 1024}
SYSTEM = "You are a terse assistant."
TEMPLATE = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ .Prompt }}"
LICENSE = "Apache License\nVersion 2.0, January 2004\n"
REPO, TAG = f"library/smolreal{os.getpid()}", "135m"
SHORT = f"smolreal{os.getpid()}:135m"  # the default-host name of REPO:TAG, through DX_OLLAMA_REGISTRY


@pytest.fixture(scope="module")
def published(oci_registry: OCIRegistry, smollm2_gguf: Path) -> OCIRegistry:
    if (REPO, TAG) not in oci_registry.published:
        oci_registry.put_model(REPO, TAG, smollm2_gguf, params=PARAMS, template=TEMPLATE, system=SYSTEM,
                               licenses=(LICENSE,))
        oci_registry.put_model(f"dxtest/smolbare{os.getpid()}", "latest", smollm2_gguf)
    return oci_registry


@pytest.fixture
def env(published: OCIRegistry, monkeypatch: pytest.MonkeyPatch) -> OCIRegistry:
    monkeypatch.setenv("DX_OLLAMA_REGISTRY", published.url)
    monkeypatch.delenv("DX_OLLAMA_TOKEN", raising=False)
    monkeypatch.delenv("DX_PULL_PARTS", raising=False)
    return published


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "dxhome", ollama_dir=False)


def blob_gets(registry: OCIRegistry, since: int, hexd: str = SMOL_SHA) -> int:
    return sum(1 for m, u in registry.requests(since) if m == "GET" and u.endswith(f"/blobs/sha256:{hexd}"))


def test_pull_verifies_every_layer_and_records_the_manifest(store: Store, env: OCIRegistry,
                                                            smollm2_gguf: Path) -> None:
    events: list[tuple[str, int | None, int | None]] = []
    entry = store.pull(SHORT, progress=lambda *e: events.append(e))
    assert entry.name == SHORT and entry.sha256 == SMOL_SHA
    assert entry.source == f"registry:registry.ollama.ai/{REPO}:{TAG}"
    assert (store.blobs / f"sha256-{SMOL_SHA}").read_bytes() == smollm2_gguf.read_bytes()
    raw, said = env.manifest(REPO, TAG)
    doc = entry.registry or {}
    assert doc["manifest_digest"] == said == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert doc["params"] == PARAMS and doc["system"] == SYSTEM and doc["template"] == TEMPLATE
    assert doc["licenses"] == [LICENSE]
    assert [ly["mediaType"] for ly in doc["layers"]] == [media(k) for k in ("model", "template", "system",
                                                                             "license", "params")]
    assert events[-1] == ("success", entry.size, entry.size)
    assert any(s == "downloading" and c == entry.size for s, c, _ in events)


def test_second_pull_is_up_to_date_and_fetches_only_the_manifest(store: Store, env: OCIRegistry) -> None:
    store.pull(SHORT)
    mark = env.log_mark()
    events: list[tuple[str, int | None, int | None]] = []
    store.pull(SHORT, progress=lambda *e: events.append(e))
    assert [m for m, _ in env.requests(mark)] == ["GET"] and "/manifests/" in env.requests(mark)[0][1]
    assert events[-1][0] == "success (up to date)"


def test_run_pulls_a_missing_name_first_and_then_resolves_from_the_store(store: Store, env: OCIRegistry) -> None:
    name = f"dxtest/smolbare{os.getpid()}"
    src = store.resolve(name)
    assert src.sha256 == SMOL_SHA and src.name == f"{name}:latest"
    mark = env.log_mark()
    assert store.resolve(name).path == src.path
    assert env.requests(mark) == []  # no network for a model already here
    with pytest.raises(ModelNotFoundError, match=r"no model named 'nope:latest'.*not found at"):
        store.resolve("nope")


def test_missing_model_and_unreachable_registry_are_one_line_errors(
    store: Store, env: OCIRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ModelNotFoundError, match="nothere:latest not found at"):
        store.pull("nothere")
    with pytest.raises(ModelNotFoundError):  # the real registry's 404 for a repository it never had
        store.pull(f"{env.host}/nobody/nothing:v1", insecure=True)
    monkeypatch.setenv("DX_OLLAMA_REGISTRY", "http://127.0.0.1:9")
    with pytest.raises(DownloadError) as ei:
        store.pull(SHORT)
    assert "\n" not in str(ei.value) and "127.0.0.1:9" in str(ei.value)


@pytest.mark.parametrize("parts", [1, 2, 4])
def test_parallel_parts_reassemble_byte_exactly(env: OCIRegistry, tmp_path: Path, smollm2_gguf: Path,
                                               parts: int) -> None:
    """The real registry answers Range requests (206) itself: each part is one GET."""
    name = reg.parse_registry_name(SHORT)
    layer = reg.fetch_manifest(name).model_layer("x")
    mark = env.log_mark()
    got = reg.download_blob(name, layer, tmp_path, parts=parts)
    assert got.read_bytes() == smollm2_gguf.read_bytes()
    assert blob_gets(env, mark) == parts
    assert not (tmp_path / f"sha256-{SMOL_SHA}.state.json").exists()


def test_a_host_name_over_plain_http_needs_insecure(tmp_path: Path, published: OCIRegistry,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DX_OLLAMA_REGISTRY", raising=False)
    store = Store(tmp_path / "h", ollama_dir=False)
    name = f"{published.host}/{REPO}:{TAG}"
    with pytest.raises(DownloadError, match="--insecure"):
        store.pull(name)
    entry = store.pull(name, insecure=True)
    assert entry.name == name and entry.sha256 == SMOL_SHA
    assert (entry.registry or {})["params"] == PARAMS
    assert json.loads((store.models / "registry-blobs.json").read_text())["blobs"][published.url][
        f"sha256:{SMOL_SHA}"] == [REPO]  # remembered: a push to this registry can mount it


def test_dx_pull_on_the_command_line(tmp_path: Path, published: OCIRegistry) -> None:
    env = {**os.environ, "DX_HOME": str(tmp_path / "cli-home"), "OLLAMA_MODELS": str(tmp_path / "no-ollama"),
           "DX_OLLAMA_REGISTRY": published.url}
    env.pop("DX_OLLAMA_TOKEN", None)
    ok = subprocess.run([sys.executable, "-m", "dx", "pull", SHORT], env=env, capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().startswith(f"{SHORT}  sha256:{SMOL_SHA}")
    assert "pulling manifest" in ok.stderr and "success" in ok.stderr
    missing = subprocess.run([sys.executable, "-m", "dx", "pull", "nothere:v9"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr and "nothere" in missing.stderr
