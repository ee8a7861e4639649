"""A Modelfile minted into one file, for real: `dxbuild --modelfile barnacle.Modelfile` (FROM smollm2, a SYSTEM
persona, PARAMETER stop, a MESSAGE pair, LICENSE) with the cached engine and bundle, then run from a fresh HOME.

It serves under the Modelfile's name with its persona (compared with the same question to the plain model),
`stop` cuts the answer, `show --modelfile` and /api/show give the Modelfile back, `dx verify` passes and a
changed metadata byte fails it, the manifest, SBOM and size report name the Modelfile, and minting the same
inputs again gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.files import flip_byte
from test_minted import Running, copy_fresh, fresh_env

from dxverify import trailer

pytestmark = pytest.mark.integration

MODELFILE = """\
FROM smollm2
SYSTEM "Your name is Captain Barnacle. You are a pirate."
PARAMETER temperature 0
PARAMETER stop pirate
MESSAGE user Hello
MESSAGE assistant "Ahoy, matey!"
LICENSE "SmolLM2: Apache-2.0"
"""
EXE_NAME = f"dx-barnacle-cpu-linux-{platform.machine()}"
QUESTION = "What is your name?"


def _mint(out: Path, modelfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dxbuild", "--gpu", "cpu", "--modelfile", str(modelfile),
                           "--no-bench", "-o", str(out)], capture_output=True, text=True, timeout=3600)


@pytest.fixture(scope="module")
def modelfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("modelfile") / "barnacle.Modelfile"
    p.write_text(MODELFILE, encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def minted_dir(tmp_path_factory: pytest.TempPathFactory, modelfile: Path, smollm2_gguf: Path,
               cpu_engine: Path) -> Path:
    """One mint; the engine and the bundle come from the cache (built once when the runtime changed)."""
    out = tmp_path_factory.mktemp("mint-modelfile")
    res = _mint(out, modelfile)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def _post(url: str, path: str, key: str | None, doc: dict[str, Any]) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url + path, json.dumps(doc).encode(), headers)
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)


def _get(url: str, path: str, key: str | None) -> dict[str, Any]:
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def test_the_trailer_and_the_release_files_carry_the_modelfile(minted_dir: Path, modelfile: Path) -> None:
    exe = minted_dir / EXE_NAME
    em = trailer.read_trailer(exe)
    assert em.metadata["model"] == "barnacle"
    rec = em.metadata["modelfile"]
    assert rec["from"] == "smollm2" and rec["base"] == f"sha256:{em.sha256}"
    assert rec["system"] == "Your name is Captain Barnacle. You are a pirate." and rec["params"]["stop"] == ["pirate"]
    digest = hashlib.sha256(modelfile.read_bytes()).hexdigest()
    assert em.metadata["modelfile_sha256"] == digest
    part = {"name": "barnacle", "sha256": digest, "size": modelfile.stat().st_size}
    facts = json.loads((minted_dir / f"{EXE_NAME}.json").read_text())
    assert facts["modelfile"] == part and facts["model"]["name"] == "smollm2"
    manifest = json.loads((minted_dir / "manifest.json").read_text())
    assert manifest["artifacts"][0]["modelfile"] == part
    bom = json.loads((minted_dir / f"{EXE_NAME}.cdx.json").read_text())
    refs = {c["bom-ref"]: c for c in bom["components"]}
    assert refs["modelfile"]["hashes"][0]["content"] == digest and "model" in refs
    report = json.loads((minted_dir / "size-report.json").read_text())["artifacts"][0]
    assert report["modelfile"]["sha256"] == digest and report["ggufs"][0]["role"] == "model"


def test_serves_under_its_name_with_its_persona_and_stop(minted_dir: Path, tmp_path: Path, smollm2_gguf: Path,
                                                         cpu_engine: Path) -> None:
    from support.serve_harness import start_dx

    plain = start_dx(tmp_path / "plain", engine=cpu_engine, model=str(smollm2_gguf))
    try:
        name = _get(plain.url, "/api/tags", plain.api_key)["models"][0]["name"]
        base = _post(plain.url, "/api/chat", plain.api_key, {
            "model": name, "stream": False, "options": {"temperature": 0, "num_predict": 40},
            "messages": [{"role": "user", "content": QUESTION}]})["message"]["content"]
    finally:
        plain.stop()
    assert "Barnacle" not in base  # the plain model has no such name: the persona is the Modelfile's doing
    exe, home = copy_fresh(minted_dir / EXE_NAME, tmp_path)
    with Running(exe, home) as run:
        tags = [m["name"] for m in _get(run.url, "/api/tags", run.key)["models"]]
        assert any(t.split(":")[0] == "barnacle" for t in tags), tags
        got = _post(run.url, "/api/chat", run.key, {
            "model": "barnacle", "stream": False, "options": {"num_predict": 60},
            "messages": [{"role": "user", "content": QUESTION}]})
        answer = got["message"]["content"]
        print(f"plain smollm2: {base!r}\nbarnacle: {answer!r}")
        assert "Barnacle" in answer  # SYSTEM and the MESSAGE pair went before the chat
        assert "pirate" not in answer and got["done_reason"] == "stop"  # PARAMETER stop cut it
        shown = _post(run.url, "/api/show", run.key, {"model": "barnacle"})
        assert shown["system"] == "Your name is Captain Barnacle. You are a pirate."
        assert shown["license"] == "SmolLM2: Apache-2.0"
        assert "SYSTEM Your name is Captain Barnacle. You are a pirate." in shown["modelfile"]
        assert "PARAMETER stop pirate" in shown["modelfile"] and "MESSAGE assistant" in shown["modelfile"]
        assert str(minted_dir) not in json.dumps(shown)  # no builder path reaches a client


def test_show_modelfile_round_trips(minted_dir: Path, tmp_path: Path) -> None:
    from dx.models.modelfile import parse

    exe, home = copy_fresh(minted_dir / EXE_NAME, tmp_path)
    res = subprocess.run([str(exe), "show", "--modelfile"], capture_output=True, text=True, env=fresh_env(home),
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    print(res.stdout)
    back, orig = parse(res.stdout), parse(MODELFILE)
    assert (back.system, back.parameters, back.messages, back.license) == (
        orig.system, orig.parameters, orig.messages, orig.license)
    assert back.from_ == "smollm2"


def test_verify_passes_and_a_changed_metadata_byte_fails(minted_dir: Path, tmp_path: Path) -> None:
    exe, home = copy_fresh(minted_dir / EXE_NAME, tmp_path)
    res = subprocess.run([str(exe), "verify", str(exe)], capture_output=True, text=True, env=fresh_env(home),
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    flip_byte(exe, exe.read_bytes().rindex(b"Captain Barnacle"))  # in the Modelfile's record, in the metadata
    res = subprocess.run([str(exe), "verify", str(exe)], capture_output=True, text=True, env=fresh_env(home),
                         timeout=300)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    print(res.stderr.strip())


def test_minting_again_gives_the_same_bytes(minted_dir: Path, modelfile: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    copy = tmp_path / "elsewhere" / modelfile.name  # the same Modelfile in another folder: the same file
    copy.parent.mkdir()
    shutil.copyfile(modelfile, copy)
    res = _mint(again, copy)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "reused from the cache" in res.stderr  # the bundle is reused, nothing rebuilt
    first, second = minted_dir / EXE_NAME, again / EXE_NAME
    assert first.stat().st_size == second.stat().st_size
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()
