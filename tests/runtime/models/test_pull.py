"""`dx pull hf:…` against a loopback Hub (hub_server.py), through both of DX's download paths.

Every test runs twice: with the real huggingface_hub client (a pip-installed dx)
and with dx.registry.huggingface, the standard-library client a dx executable uses because
it is built without huggingface_hub.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from support.hub_server import FakeHub
from support.waits import wait_until

from dx.errors import ModelNotFoundError
from dx.models.catalog import Store
from dx.models.pull import DownloadError
from dxverify.errors import IntegrityError, MalformedInputError

pytestmark = pytest.mark.integration  # the real huggingface_hub client against a loopback Hub

SMOL_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def hub(smollm2_gguf: Path):
    h = FakeHub()
    h.add("HuggingFaceTB/good", FILE, smollm2_gguf)
    h.add("HuggingFaceTB/flaky", FILE, smollm2_gguf, fault="drop_first")
    h.add("HuggingFaceTB/dead", FILE, smollm2_gguf, fault="drop_always")
    h.add("HuggingFaceTB/corrupt", FILE, smollm2_gguf, fault="corrupt")
    # Not an LFS file (git-sha style ETag), so no digest is published: only the structure check can refuse.
    h.add("evil/garbage", "model.gguf", b"GGUF" + b"\xff" * 4096, etag="a" * 40)
    h.add("pub/sidecar", FILE, smollm2_gguf, etag="b" * 40)
    h.add("pub/sidecar", FILE + ".sha256", f"{SMOL_SHA}  {FILE}\n".encode())
    h.add("pub/badsidecar", FILE, smollm2_gguf, etag="c" * 40)
    h.add("pub/badsidecar", FILE + ".sha256", ("0" * 64 + "\n").encode())
    h.start()
    yield h
    h.stop()


@pytest.fixture(params=["huggingface_hub", "stdlib"])
def client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "stdlib":
        monkeypatch.setattr("dx.models.pull._hub_or_none", lambda: None)  # as in an executable
    return request.param


@pytest.fixture
def store(tmp_path: Path, hub: FakeHub, client: str, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # the user's HF cache, empty
    return Store(tmp_path / "dxhome", ollama_dir=False)


def stored_files(store: Store) -> list[str]:
    """Everything in blobs/ and manifests/, and leftovers in tmp/."""
    out = []
    for d in (store.blobs, store.manifests, store.tmp):
        if d.is_dir():
            out += [str(p.relative_to(store.models)) for p in d.iterdir()]
    return sorted(out)


def download_leftovers(store: Store) -> list[Path]:
    """Files or links left in the download cache, other than huggingface_hub's bookkeeping (refs,
    locks, empty "does not exist" markers)."""
    return [p for p in store.downloads.rglob("*")
            if (p.is_file() or p.is_symlink()) and not {"refs", ".locks", ".no_exist"} & set(p.parts)
            and p.name != "CACHEDIR.TAG"]


def test_pull_is_verified_and_lands_in_the_store(store: Store, hub: FakeHub) -> None:
    events: list[tuple[str, int | None, int | None]] = []
    entry = store.pull(f"hf:HuggingFaceTB/good/{FILE}", progress=lambda *e: events.append(e))
    assert entry.name == "hf.co/HuggingFaceTB/good:SmolLM2-135M-Instruct.Q4_1"
    assert entry.sha256 == SMOL_SHA
    assert entry.facts.arch == "llama" and entry.facts.quant == "Q4_1"
    blob = store.blobs / f"sha256-{SMOL_SHA}"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == SMOL_SHA
    assert stored_files(store) == [
        f"blobs/sha256-{SMOL_SHA}",
        "manifests/hf.co%2FHuggingFaceTB%2Fgood%3ASmolLM2-135M-Instruct.Q4_1.json",
    ]
    # huggingface_hub's copy was moved, not kept: one copy of the bytes on disk.
    assert download_leftovers(store) == []
    assert events[-1] == ("success", entry.size, entry.size)
    assert any(s == "downloading" and c == entry.size for s, c, _ in events)
    # resolving the same hf: spec again uses the store.
    before = len(hub.log)
    src = store.resolve(f"hf:HuggingFaceTB/good/{FILE}")
    assert src.path == blob and src.sha256 == SMOL_SHA
    assert len(hub.log) == before
    # No telemetry side-requests: only HEADs and GETs of repository files.
    assert all("/resolve/main/" in path for _, path, _ in hub.log), hub.log


def test_second_pull_is_up_to_date_without_downloading(store: Store, hub: FakeHub) -> None:
    store.pull(f"hf:HuggingFaceTB/good/{FILE}")
    gets = len(hub.gets(FILE))
    entry = store.pull(f"hf:HuggingFaceTB/good/{FILE}")
    assert entry.sha256 == SMOL_SHA
    assert len(hub.gets(FILE)) == gets  # HEAD only


def test_dropped_connection_resumes_with_a_range_request(store: Store, hub: FakeHub) -> None:
    entry = store.pull(f"hf:HuggingFaceTB/flaky/{FILE}", name="flaky")
    assert entry.name == "flaky:latest" and entry.sha256 == SMOL_SHA
    ranges = [r for m, p, r in hub.log if m == "GET" and "/flaky/" in p]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1].split("=")[1].rstrip("-")) > 0


def test_connection_that_always_drops_fails_cleanly_with_nothing_stored(store: Store) -> None:
    with pytest.raises(DownloadError) as ei:
        store.pull(f"hf:HuggingFaceTB/dead/{FILE}")
    assert "\n" not in str(ei.value) and "HuggingFaceTB/dead" in str(ei.value)
    assert stored_files(store) == []
    assert not [p for p in store.downloads.rglob("*") if p.is_file() and p.suffix == ".incomplete"]


def test_corrupted_bytes_are_refused_and_nothing_is_stored(store: Store) -> None:
    with pytest.raises(IntegrityError, match="expected " + SMOL_SHA):
        store.pull(f"hf:HuggingFaceTB/corrupt/{FILE}")
    assert stored_files(store) == []
    assert download_leftovers(store) == []


def test_file_without_published_hash_still_gets_the_structure_check(store: Store) -> None:
    with pytest.raises(MalformedInputError):
        store.pull("hf:evil/garbage/model.gguf")
    assert stored_files(store) == []


def test_sidecar_sha256_is_used(store: Store) -> None:
    assert store.pull(f"hf:pub/sidecar/{FILE}").sha256 == SMOL_SHA
    with pytest.raises(IntegrityError, match="expected " + "0" * 64):
        store.pull(f"hf:pub/badsidecar/{FILE}")


def test_sha256_option_is_checked(store: Store) -> None:
    with pytest.raises(IntegrityError):
        store.pull(f"hf:HuggingFaceTB/good/{FILE}", sha256="1" * 64)
    assert stored_files(store) == []
    assert store.pull(f"hf:HuggingFaceTB/good/{FILE}", sha256=SMOL_SHA.upper()).sha256 == SMOL_SHA


def test_missing_file_and_unreachable_hub_are_one_line_errors(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ModelNotFoundError, match=r"nope\.gguf not found"):
        store.pull("hf:HuggingFaceTB/good/nope.gguf")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    with pytest.raises(DownloadError) as ei:
        store.pull(f"hf:HuggingFaceTB/good/{FILE}")
    assert "\n" not in str(ei.value)
    assert stored_files(store) == []


def test_offline_mode_uses_the_store_and_never_the_network(
    store: Store, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.pull(f"hf:HuggingFaceTB/good/{FILE}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    before = len(hub.log)
    assert store.pull(f"hf:HuggingFaceTB/good/{FILE}").sha256 == SMOL_SHA
    assert store.resolve(f"hf:HuggingFaceTB/good/{FILE}").sha256 == SMOL_SHA
    assert len(hub.log) == before
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        store.pull(f"hf:HuggingFaceTB/flaky/{FILE}")


def test_offline_mode_imports_from_the_users_hf_cache(
    store: Store, hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    # Another tool downloaded the file into the user's HF cache earlier.
    huggingface_hub.hf_hub_download(
        "HuggingFaceTB/good", FILE, cache_dir=tmp_path / "hf-home" / "hub", endpoint=hub.url
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    entry = store.pull(f"hf:HuggingFaceTB/good/{FILE}")
    assert entry.sha256 == SMOL_SHA and entry.source == f"hf:HuggingFaceTB/good/{FILE}"


def _ended(result: dict[str, object]) -> bool:
    raise AssertionError(f"pull a ended before its download started: {result.get('a')!r}")


def test_two_pulls_from_one_repository_at_once(
    store: Store, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    hub = FakeHub()
    slow = hub.add("pub/two", "a.gguf", smollm2_gguf, fault="slow", delay=0.03)
    hub.add("pub/two", "b.gguf", smollm2_gguf)
    hub.start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    result: dict[str, object] = {}

    def pull_a() -> None:
        try:
            result["a"] = store.pull("hf:pub/two/a.gguf")
        except Exception as e:
            result["a"] = e

    t = threading.Thread(target=pull_a)
    t.start()
    try:
        wait_until(lambda: slow.gets > 0 or (not t.is_alive() and _ended(result)),
                   "pull a to start downloading a.gguf from the hub")
        # b finishes (and cleans up after itself) while a is still downloading into the same cache folder.
        assert store.pull("hf:pub/two/b.gguf").name == "hf.co/pub/two:b"
        t.join(120)
    finally:
        hub.stop()
    assert getattr(result["a"], "name", result["a"]) == "hf.co/pub/two:a"
    assert download_leftovers(store) == []


@pytest.fixture
def good_partial(tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """(hf, remote, partial path) for the stdlib client, the partial not yet written."""
    from dx.names import HFFile
    from dx.registry import huggingface as hub_lite

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hf = HFFile("HuggingFaceTB/good", FILE)
    remote = hub_lite.head(hf)
    return hf, remote, tmp_path / (hub_lite._key(hf, remote) + ".partial")


def test_stdlib_client_resumes_a_partial_download_left_by_an_earlier_pull(
    good_partial, hub: FakeHub, smollm2_gguf: Path  # type: ignore[no-untyped-def]
) -> None:
    from dx.registry import huggingface as hub_lite

    hf, remote, part = good_partial
    assert remote.etag == SMOL_SHA and remote.size == smollm2_gguf.stat().st_size
    data = smollm2_gguf.read_bytes()
    part.write_bytes(data[:12_345_678])  # what a killed pull left
    before = len(hub.gets(FILE))
    done = hub_lite.download(hf, remote, part.parent)
    assert done.read_bytes() == data and not part.exists()
    assert [r for _m, _p, r in hub.gets(FILE)[before:]] == ["bytes=12345678-"]


def test_stdlib_client_starts_over_when_the_partial_is_longer_than_the_file(good_partial) -> None:  # type: ignore[no-untyped-def]
    from dx.registry import huggingface as hub_lite

    hf, remote, part = good_partial
    part.write_bytes(b"x" * (remote.size + 10))
    done = hub_lite.download(hf, remote, part.parent)
    assert hashlib.sha256(done.read_bytes()).hexdigest() == SMOL_SHA
