"""`dx push` against a REAL registry: Debian's docker-registry (distribution 2.8) on loopback, plain HTTP.

The registry is the session fixture ``oci_registry`` (tests/support/oci_registry.py); its access
log shows which requests DX made. The model is the real SmolLM2 GGUF in a real store.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.oci_registry import CONFIG_TYPE, MANIFEST_TYPE, OCIRegistry, media

from dx.errors import DownloadError, InvalidModelNameError, ModelNotFoundError
from dx.models.catalog import Store
from dx.models.push import SEEN_FILE, push_model
from dx.registry import oci_push as oci
from dx.registry import ollama as reg

SMOL_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PARAMS = {"stop": ["<|im_end|>"], "temperature": 0.2}
SYSTEM = "You are terse."
_SEQ = iter(range(10_000))


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DX_OLLAMA_REGISTRY", raising=False)
    monkeypatch.delenv("DX_OLLAMA_TOKEN", raising=False)


@pytest.fixture
def store(tmp_path: Path, smollm2_gguf: Path) -> Store:
    s = Store(tmp_path / "dxhome", ollama_dir=False)
    s.import_file(smollm2_gguf, "smol", link=True)
    return s


def repo() -> str:
    """A repository no other test used (the registry lives for the whole session)."""
    return f"dxtest/push{os.getpid()}-{next(_SEQ)}"


def test_push_writes_ollamas_manifest_and_the_registry_serves_the_same_bytes(
    store: Store, oci_registry: OCIRegistry, smollm2_gguf: Path
) -> None:
    r = repo()
    lines: list[dict] = []
    result = push_model(store, "smol", f"{oci_registry.host}/{r}:v1", insecure=True, progress=lines.append)
    raw, said = oci_registry.manifest(r, "v1")
    assert said == result.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert result.pinned == f"{oci_registry.host}/{r}:v1@{result.digest}"
    doc = json.loads(raw)
    assert doc["schemaVersion"] == 2 and doc["mediaType"] == MANIFEST_TYPE
    assert doc["config"]["mediaType"] == CONFIG_TYPE
    assert [ly["mediaType"] for ly in doc["layers"]] == [media("model")]
    assert doc["layers"][0]["digest"] == f"sha256:{SMOL_SHA}" and doc["layers"][0]["size"] == smollm2_gguf.stat().st_size
    config = json.loads(oci_registry.blob(r, doc["config"]["digest"]))
    assert config["model_format"] == "gguf" and config["rootfs"]["diff_ids"] == [f"sha256:{SMOL_SHA}"]
    got = hashlib.sha256(oci_registry.blob(r, f"sha256:{SMOL_SHA}")).hexdigest()
    assert got == SMOL_SHA
    statuses = [ln["status"] for ln in lines]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
    assert f"pushing {SMOL_SHA[:12]}" in statuses
    model_lines = [ln for ln in lines if ln.get("digest") == f"sha256:{SMOL_SHA}"]
    assert model_lines[-1]["completed"] == model_lines[-1]["total"] == smollm2_gguf.stat().st_size
    assert (result.sent, result.mounted, result.present) == (2, 0, 0)


def test_a_second_push_sends_nothing_and_pins_the_same_digest(store: Store, oci_registry: OCIRegistry) -> None:
    r = repo()
    first = push_model(store, "smol", f"{oci_registry.host}/{r}:v1", insecure=True)
    mark = oci_registry.log_mark()
    again = push_model(store, "smol", f"{oci_registry.host}/{r}:v1", insecure=True)
    assert again.digest == first.digest and (again.sent, again.mounted, again.present) == (0, 0, 2)
    asked = oci_registry.requests(mark)
    assert [m for m, _ in asked].count("HEAD") == 2 and not [u for m, u in asked if m in ("PATCH", "POST")]
    assert [m for m, u in asked if "/blobs/uploads/" in u] == []


def test_a_blob_seen_in_another_repository_is_mounted_not_sent(store: Store, oci_registry: OCIRegistry) -> None:
    a, b = repo(), repo()
    push_model(store, "smol", f"{oci_registry.host}/{a}:v1", insecure=True)
    seen = json.loads((store.models / SEEN_FILE).read_text())
    assert a in seen["blobs"][oci_registry.url][f"sha256:{SMOL_SHA}"]
    mark = oci_registry.log_mark()
    result = push_model(store, "smol", f"{oci_registry.host}/{b}:v2", insecure=True)
    assert (result.sent, result.mounted, result.present) == (0, 2, 0)
    asked = oci_registry.requests(mark)
    mounts = [u for m, u in asked if m == "POST"]
    assert len(mounts) == 2 and all(f"from={a.replace('/', '%2F')}" in u and "mount=sha256" in u for u in mounts)
    assert not [u for m, u in asked if m in ("PUT", "PATCH") and "/blobs/" in u]  # no bytes went up
    assert oci_registry.has_blob(b, f"sha256:{SMOL_SHA}")
    pushed = json.loads((store.models / SEEN_FILE).read_text())["pushed"][oci_registry.url]
    assert pushed[f"{oci_registry.host}/{b}:v2"] == result.digest


@pytest.mark.parametrize("chunk", [16 << 20, 1 << 30])
def test_chunked_and_monolithic_uploads_store_the_same_bytes(
    store: Store, oci_registry: OCIRegistry, chunk: int, smollm2_gguf: Path
) -> None:
    r = repo()
    mark = oci_registry.log_mark()
    push_model(store, "smol", f"{oci_registry.host}/{r}:v1", insecure=True, chunk=chunk)
    patches = [u for m, u in oci_registry.requests(mark) if m == "PATCH"]
    size = smollm2_gguf.stat().st_size
    assert len(patches) == (-(-size // chunk) if size > chunk else 0)
    assert hashlib.sha256(oci_registry.blob(r, f"sha256:{SMOL_SHA}")).hexdigest() == SMOL_SHA


def test_pushed_then_pulled_back_by_a_fresh_store_is_byte_identical(
    store: Store, oci_registry: OCIRegistry, tmp_path: Path, smollm2_gguf: Path
) -> None:
    r = repo()
    pushed = push_model(store, "smol", f"{oci_registry.host}/{r}:v1", insecure=True)
    fresh = Store(tmp_path / "fresh", ollama_dir=False)
    entry = fresh.pull(f"{oci_registry.host}/{r}:v1", insecure=True)
    assert entry.name == f"{oci_registry.host}/{r}:v1"
    assert hashlib.sha256(entry.path.read_bytes()).hexdigest() == SMOL_SHA
    assert entry.path.read_bytes() == smollm2_gguf.read_bytes()
    assert (entry.registry or {})["manifest_digest"] == pushed.digest
    # the pulled model pushed on (another repository) keeps the same manifest: nothing changed on the way
    again = push_model(fresh, entry.name, f"{oci_registry.host}/{repo()}:v1", insecure=True)
    assert again.digest == pushed.digest and again.mounted == 2  # the pull remembered where the blobs are


def test_a_pulled_models_small_layers_go_back_with_their_digests(
    tmp_path: Path, oci_registry: OCIRegistry, smollm2_gguf: Path
) -> None:
    """Ollama's params/system/template/license layers survive pull -> push byte for byte."""
    r = repo()
    oci_registry.put_model(r, "v1", smollm2_gguf, params=PARAMS, system=SYSTEM, template="{{ .Prompt }}",
                           licenses=("MIT\n",))
    src = json.loads(oci_registry.published[(r, "v1")])
    store = Store(tmp_path / "h", ollama_dir=False)
    entry = store.pull(f"{oci_registry.host}/{r}:v1", insecure=True)
    result = push_model(store, entry.name, f"{oci_registry.host}/{repo()}:v2", insecure=True)
    assert [ly.to_json() for ly in result.layers] == src["layers"]


def test_a_model_with_a_system_prompt_and_params_but_no_layer_list_gets_ollamas_layers(
    store: Store, oci_registry: OCIRegistry
) -> None:
    """What `dx create` records (params, system, messages; no registry layer list) becomes Ollama's layers."""
    entry = store.get("smol")
    record = {"params": PARAMS, "system": SYSTEM, "messages": [{"role": "user", "content": "hi"}]}
    store.name_blob("shaped", entry.sha256, "create:test", registry=record)
    r = repo()
    push_model(store, "shaped", f"{oci_registry.host}/{r}:v1", insecure=True)
    doc = json.loads(oci_registry.manifest(r, "v1")[0])
    kinds = [ly["mediaType"].rsplit(".", 1)[1] for ly in doc["layers"]]
    assert kinds == ["model", "system", "params", "messages"]
    by_kind = {k: ly["digest"] for k, ly in zip(kinds, doc["layers"], strict=True)}
    assert oci_registry.blob(r, by_kind["system"]) == SYSTEM.encode()
    assert json.loads(oci_registry.blob(r, by_kind["params"])) == PARAMS
    back = Store(store.root.parent / "back", ollama_dir=False).pull(f"{oci_registry.host}/{r}:v1", insecure=True)
    assert (back.registry or {})["system"] == SYSTEM and (back.registry or {})["params"] == PARAMS


# ---- errors: one line each, the right class (so the right HTTP status) ---------------------------


def test_unknown_model_bad_destination_and_unreachable_registry(store: Store, oci_registry: OCIRegistry) -> None:
    with pytest.raises(ModelNotFoundError, match="no model named 'nope:latest'"):
        push_model(store, "nope", f"{oci_registry.host}/{repo()}:v1", insecure=True)
    for bad in ("a/b/c/d", "x:y:z/", "ns/UPPER CASE:t"):
        with pytest.raises(InvalidModelNameError):
            push_model(store, "smol", bad, insecure=True)
    with pytest.raises(DownloadError) as ei:
        push_model(store, "smol", f"127.0.0.1:9/{repo()}:v1", insecure=True)
    assert "127.0.0.1:9" in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(DownloadError, match="--insecure"):  # https to a plain-HTTP registry: say what to do
        push_model(store, "smol", f"{oci_registry.host}/{repo()}:v1")


def test_a_blob_whose_bytes_do_not_match_its_digest_is_refused_by_the_registry(
    oci_registry: OCIRegistry, tmp_path: Path
) -> None:
    name = reg.parse_registry_name(f"{oci_registry.host}/{repo()}:v1").plain_http()
    lie = oci.Blob(reg.Layer(media("system"), "0" * 64, 5), data=b"hello")
    location = oci.start_upload(name, lie.layer)
    assert location is not None
    with pytest.raises(DownloadError, match="DIGEST_INVALID"):
        oci.upload(name, lie, location)
    assert not oci_registry.has_blob(name.repository, "sha256:" + "0" * 64)


_PEAK_RSS = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if done.returncode == 0 else sys.exit(done.returncode))
"""


def test_dx_push_on_the_command_line(tmp_path: Path, oci_registry: OCIRegistry, smollm2_gguf: Path) -> None:
    env = {**os.environ, "DX_HOME": str(tmp_path / "cli"), "OLLAMA_MODELS": str(tmp_path / "no-ollama")}
    env.pop("DX_OLLAMA_REGISTRY", None)
    dx = [sys.executable, "-m", "dx"]
    subprocess.run([*dx, "pull", str(smollm2_gguf), "--name", "smol"], env=env, check=True, capture_output=True)
    r = repo()
    ok = subprocess.run([*dx, "push", "smol", f"{oci_registry.host}/{r}:cli", "--insecure"], env=env,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    # streamed from disk: the push's peak memory stays well under the model's size (a fresh repository
    # so every byte goes up again, no mount), measured on a process of its own
    (tmp_path / "cli" / "models" / SEEN_FILE).unlink()
    measured = subprocess.run([sys.executable, "-c", _PEAK_RSS, *dx, "push", "smol",
                               f"{oci_registry.host}/{repo()}:rss", "--insecure"],
                              env={**env, "DX_HOME": str(tmp_path / "cli"), "HOME": str(tmp_path / "cli")},
                              capture_output=True, text=True, timeout=300)
    assert measured.returncode == 0, measured.stderr
    assert "(sent 2, mounted 0, already there 0)" in measured.stdout
    peak = int(measured.stdout.strip().splitlines()[-1]) * 1024
    assert peak < smollm2_gguf.stat().st_size * 0.8, (peak, smollm2_gguf.stat().st_size)
    digest = oci_registry.manifest(r, "cli")[1]
    assert ok.stdout.startswith(f"{oci_registry.host}/{r}:cli@{digest}")
    assert "retrieving manifest" in ok.stderr and "pushing manifest" in ok.stderr and "success" in ok.stderr
    bad = subprocess.run([*dx, "push", "nope", f"{oci_registry.host}/{r}:cli", "--insecure"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "nope" in bad.stderr
    back = subprocess.run([*dx, "pull", f"{oci_registry.host}/{r}:cli", "--insecure"],
                          env={**env, "DX_HOME": str(tmp_path / "cli2")}, capture_output=True, text=True, timeout=300)
    assert back.returncode == 0, back.stderr
    assert back.stdout.startswith(f"{oci_registry.host}/{r}:cli  sha256:{SMOL_SHA}")


# ---- what a store record becomes (no registry needed) -------------------------------------------


def test_a_recorded_params_layer_keeps_the_encoding_its_digest_names() -> None:
    """Ollama writes params with Go's encoder (HTML escapes, a newline): a pull -> push keeps those bytes."""
    from dx.models.push import _small_layers

    params = {"stop": ["<|im_end|>"], "temperature": 0.2}
    go = b'{"stop":["\\u003c|im_end|\\u003e"],"temperature":0.2}\n'
    recorded = [reg.Layer(media("params"), hashlib.sha256(go).hexdigest(), len(go))]
    assert _small_layers({"params": params}, recorded)["params"][0].data == go
    fresh = _small_layers({"params": params}, [])["params"][0].data
    assert fresh == b'{"stop":["<|im_end|>"],"temperature":0.2}'  # DX's own: compact, sorted


@pytest.mark.parametrize("name, full", [
    ("127.0.0.1:5000/ns/m:v1", "127.0.0.1:5000/ns/m:v1"), ("localhost:5000/ns/m", "localhost:5000/ns/m:latest"),
    ("registry.example.com/ns/m:v1", "registry.example.com/ns/m:v1"),
    ("a:5/m", None), ("ns/m:5/x:y", None), ("h:1:2/ns/m", None), ("ns/h:5/m", None),
])
def test_store_names_may_carry_a_registry_host_with_a_port(name: str, full: str | None) -> None:
    """A model pulled from (or named for) a registry on a port keeps that name, as Ollama's does."""
    from dx.names import parse_name

    if full is not None:
        assert str(parse_name(name)) == full
    else:
        with pytest.raises(InvalidModelNameError):
            parse_name(name)


def test_a_projector_layer_goes_up_when_its_blob_is_in_the_store(store: Store, oci_registry: OCIRegistry) -> None:
    entry = store.get("smol")
    proj = b"projector bytes stand-in"
    hexd = hashlib.sha256(proj).hexdigest()
    (store.blobs / f"sha256-{hexd}").write_bytes(proj)
    missing = "1" * 64
    record = {"layers": [{"mediaType": media("model"), "digest": f"sha256:{SMOL_SHA}", "size": entry.size},
                         {"mediaType": media("projector"), "digest": f"sha256:{hexd}", "size": len(proj)},
                         {"mediaType": media("adapter"), "digest": f"sha256:{missing}", "size": 3}],
              "system": SYSTEM}
    store.name_blob("withproj", entry.sha256, "test", registry=record)
    r = repo()
    lines: list[dict] = []
    push_model(store, "withproj", f"{oci_registry.host}/{r}:v1", insecure=True, progress=lines.append)
    doc = json.loads(oci_registry.manifest(r, "v1")[0])
    assert [ly["mediaType"] for ly in doc["layers"]] == [media("model"), media("projector"), media("system")]
    assert oci_registry.blob(r, f"sha256:{hexd}") == proj
    notes = [ln["status"] for ln in lines if ln["status"].startswith("note:")]
    assert len(notes) == 1 and "adapter" in notes[0] and missing[:12] in notes[0]


def test_a_model_kept_in_place_is_pushed_from_its_offset(
    tmp_path: Path, oci_registry: OCIRegistry, smollm2_gguf: Path
) -> None:
    """A record naming bytes inside another file (a minted executable's model) pushes exactly those bytes."""
    host_file = tmp_path / "carrier.bin"
    with open(host_file, "wb") as out, open(smollm2_gguf, "rb") as src:
        out.write(b"\x7fELF" + b"x" * 4092)
        while block := src.read(1 << 20):
            out.write(block)
        out.write(b"trailer")
    store = Store(tmp_path / "h", ollama_dir=False)
    size = smollm2_gguf.stat().st_size
    store.name_in_place("inplace", host_file, 4096, size, SMOL_SHA, source="test")
    r = repo()
    push_model(store, "inplace", f"{oci_registry.host}/{r}:v1", insecure=True, chunk=32 << 20)
    assert hashlib.sha256(oci_registry.blob(r, f"sha256:{SMOL_SHA}")).hexdigest() == SMOL_SHA


def test_a_damaged_store_blob_is_refused_and_nothing_is_tagged(
    tmp_path: Path, oci_registry: OCIRegistry, smollm2_gguf: Path
) -> None:
    store = Store(tmp_path / "h", ollama_dir=False)
    entry = store.import_file(smollm2_gguf, "smol")  # a copy of its own: this test damages it
    assert entry.path.stat().st_ino != smollm2_gguf.stat().st_ino
    with open(entry.path, "r+b") as f:
        f.seek(entry.size - 10)
        byte = f.read(1)
        f.seek(entry.size - 10)
        f.write(bytes([byte[0] ^ 0xFF]))
    r = repo()
    with pytest.raises(DownloadError, match="DIGEST_INVALID") as ei:
        push_model(store, "smol", f"{oci_registry.host}/{r}:v1", insecure=True)
    assert "changed or is damaged" in ei.value.hint
    assert not oci_registry.has_blob(r, f"sha256:{SMOL_SHA}")
    assert oci_registry.request("GET", f"/v2/{r}/manifests/v1", headers={"Accept": MANIFEST_TYPE})[0] == 404


def test_a_stale_mount_hint_becomes_an_upload(store: Store, oci_registry: OCIRegistry) -> None:
    """The record says another repository has the blob, the registry says no (202): the bytes go up."""
    from dx.models.push import SeenBlobs

    SeenBlobs(store.models / SEEN_FILE).add(oci_registry.url, "dxtest/never-was", [f"sha256:{SMOL_SHA}"])
    r = repo()
    mark = oci_registry.log_mark()
    result = push_model(store, "smol", f"{oci_registry.host}/{r}:v1", insecure=True)
    assert (result.sent, result.mounted) == (2, 0)
    assert any(m == "POST" and "mount=" in u for m, u in oci_registry.requests(mark))
    assert hashlib.sha256(oci_registry.blob(r, f"sha256:{SMOL_SHA}")).hexdigest() == SMOL_SHA
