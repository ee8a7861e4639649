"""dx.models.pull.pull_by_name (``/api/pull``): a model DX has is a success without the network, with
Ollama's progress lines; a name that is not one is a 400; a registry that cannot be reached is a 502
unless DX has the model already; a model whose bytes went bad is never a success."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dx.errors import DownloadError, InvalidModelNameError, ModelConflictError, http_answer
from dx.models.catalog import Store
from dx.models.pull import pull_by_name


def _closed() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every registry is a closed loopback port: any request it gets fails at once."""
    monkeypatch.setenv("DX_OLLAMA_REGISTRY", _closed())
    monkeypatch.setenv("HF_ENDPOINT", _closed())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "home", ollama_dir=False)


def lines(store: Store, name: str) -> list[tuple]:
    seen: list[tuple] = []
    pull_by_name(store, name, lambda *e: seen.append(e))
    return seen


def test_a_model_made_here_is_present_without_the_network(offline: None, store: Store, smollm2_gguf: Path) -> None:
    entry = store.import_file(smollm2_gguf, "mine")
    seen = lines(store, "mine")
    assert [s for s, _, _ in seen] == ["pulling manifest", f"pulling {entry.sha256[:12]}", "verifying sha256 digest",
                                       "writing manifest", "success"]
    assert seen[1][1:] == (entry.size, entry.size)


@pytest.mark.parametrize("source, name", [
    ("registry:registry.ollama.ai/library/regmodel:latest", "regmodel"),
    ("hf:HuggingFaceTB/x/f.gguf", "hf:HuggingFaceTB/x/f.gguf"),
])
def test_a_pulled_model_falls_back_to_the_copy_here_when_its_registry_is_down(
    offline: None, store: Store, smollm2_gguf: Path, source: str, name: str,
) -> None:
    store.import_file(smollm2_gguf, "regmodel" if source.startswith("registry:") else "hf.co/HuggingFaceTB/x:f",
                      source=source)
    seen = [s for s, _, _ in lines(store, name)]
    assert any("cannot be reached" in s for s in seen) and seen[-1] == "success"


def test_a_missing_model_with_the_registry_down_is_a_502(offline: None, store: Store) -> None:
    with pytest.raises(DownloadError) as e:
        pull_by_name(store, "nosuch")
    assert http_answer(e.value)[0] == 502 and "\n" not in str(e.value)


@pytest.mark.parametrize("bad", ["a/b/c/d/e", "../x", "/etc/passwd", "x.gguf", "x:", "hf:nope", "a/b/c/d"])
def test_what_is_not_a_model_name_is_a_400(offline: None, store: Store, bad: str) -> None:
    with pytest.raises(InvalidModelNameError) as e:
        pull_by_name(store, bad)
    assert http_answer(e.value)[0] == 400


def test_a_damaged_model_made_here_is_never_a_success(offline: None, store: Store, smollm2_gguf: Path) -> None:
    entry = store.import_file(smollm2_gguf, "mine")
    with open(entry.path, "r+b") as f:
        f.seek(-5, 2)
        f.write(b"\x00\xff")
    with pytest.raises(ModelConflictError, match="'mine:latest' no longer matches"):
        pull_by_name(store, "mine")
