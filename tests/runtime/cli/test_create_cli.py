"""``dx create NAME -f Modelfile`` and ``dx show NAME --modelfile``: the real CLI on a fresh store.

FROM a GGUF path (relative to the Modelfile), a store name and a digest; ADAPTER and DRAFT paths; the
refusals (a bad Modelfile names its line, exit 2). No engine: what a created model does when served is
tests/runtime/server/test_create_api.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.gguf_handcraft import STR, tiny_model
from support.serve_harness import dx_env
from support.tiny_lora import write_tiny_lora


def _dx(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dx", *args], env=dx_env(home, None), cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> dict:
    tmp = tmp_path_factory.mktemp("create-cli")
    home = tmp / "home"
    os.symlink(smollm2_gguf, tmp / "smol.gguf")
    write_tiny_lora(tmp / "lora.gguf")
    write_tiny_lora(tmp / "qwen-lora.gguf", arch="qwen2")  # an adapter for another architecture
    craft = tiny_model(n_vocab=12)  # says it is an adapter, has no LoRA tensors
    craft.kvs = [kv for kv in craft.kvs if not kv[0].startswith("tokenizer.")] + [("general.type", STR, "adapter")]
    (tmp / "fake-lora.gguf").write_bytes(craft.build().data)
    (tmp / "Modelfile").write_text(
        "# a pirate, from a file next to this Modelfile\n"
        "FROM ./smol.gguf\n"
        "ADAPTER ./lora.gguf\n"
        "DRAFT ./smol.gguf\n"
        'SYSTEM """You are a pirate.\nAlways."""\n'
        "PARAMETER temperature 0.3\nPARAMETER stop <|im_end|>\nPARAMETER stop END\n"
        "MESSAGE user Ahoy?\nMESSAGE assistant Arr!\nLICENSE Apache-2.0\n")
    r = _dx(home, "create", "pirate", "-f", str(tmp / "Modelfile"), cwd=tmp_path_factory.getbasetemp())
    assert r.returncode == 0, r.stderr
    return {"tmp": tmp, "home": home, "create": r,
            "sha": hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest(),
            "lora": hashlib.sha256((tmp / "lora.gguf").read_bytes()).hexdigest()}


def test_create_from_a_path_copies_it_in_once(world: dict) -> None:
    r = world["create"]
    assert "created pirate:latest" in r.stdout
    assert r.stderr.strip().splitlines()[-1] == "success"
    blobs = sorted(p.name for p in (world["home"] / "models" / "blobs").iterdir())
    assert blobs == sorted([f"sha256-{world['sha']}", f"sha256-{world['lora']}"])  # the draft is the same blob
    listed = _dx(world["home"], "list", "--json")
    assert [m["name"] for m in json.loads(listed.stdout)] == ["pirate:latest"]


def test_show_modelfile_gives_it_back_without_paths(world: dict) -> None:
    r = _dx(world["home"], "show", "pirate", "--modelfile")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert f"FROM sha256:{world['sha']}" in text  # the file it came from is not named: its digest is
    assert f"ADAPTER sha256:{world['lora']}" in text and f"DRAFT sha256:{world['sha']}" in text
    assert 'SYSTEM """You are a pirate.\nAlways."""' in text
    assert "PARAMETER stop <|im_end|>\nPARAMETER stop END" in text and "PARAMETER temperature 0.3" in text
    assert "MESSAGE user Ahoy?\nMESSAGE assistant Arr!" in text and "LICENSE Apache-2.0" in text
    assert str(world["tmp"]) not in text


def test_create_from_a_created_model_inherits_and_overrides(world: dict) -> None:
    mf = world["tmp"] / "Modelfile.kid"
    mf.write_text("from pirate\nparameter temperature 0.9\nsystem You are a parrot.\n")
    r = _dx(world["home"], "create", "parrot", "-f", str(mf))
    assert r.returncode == 0, r.stderr
    text = _dx(world["home"], "show", "parrot", "--modelfile").stdout
    assert "SYSTEM You are a parrot." in text and "PARAMETER temperature 0.9" in text
    assert "PARAMETER stop END" in text and "MESSAGE assistant Arr!" in text  # inherited
    assert f"ADAPTER sha256:{world['lora']}" in text


def test_create_from_a_digest(world: dict) -> None:
    mf = world["tmp"] / "Modelfile.digest"
    mf.write_text(f"FROM sha256:{world['sha']}\nSYSTEM hi\n")
    r = _dx(world["home"], "create", "bydigest", "-f", str(mf))
    assert r.returncode == 0, r.stderr


def test_deleting_the_base_keeps_blobs_a_created_model_names(world: dict) -> None:
    mf = world["tmp"] / "Modelfile.tmp"
    mf.write_text("FROM pirate\n")
    assert _dx(world["home"], "create", "doomed", "-f", str(mf)).returncode == 0
    assert _dx(world["home"], "rm", "doomed").returncode == 0
    assert (world["home"] / "models" / "blobs" / f"sha256-{world['lora']}").is_file()


@pytest.mark.parametrize(("text", "words"), [
    ("FROM pirate\nPARAMETER temprature 1\n", "Modelfile line 2: PARAMETER temprature: unknown parameter"),
    ("FROM pirate\nPARAMETER num_ctx lots\n", "Modelfile line 2: PARAMETER num_ctx: invalid int value 'lots'"),
    ("SYSTEM hi\n", "no FROM line"),
    ("FROM ./missing.gguf\n", "FROM ./missing.gguf: no such file"),
    ("FROM pirate\nADAPTER ./smol.gguf\n", "Modelfile line 2: ADAPTER ./smol.gguf is not an adapter"),
    ("FROM pirate\n\nADAPTER ./fake-lora.gguf\n", "Modelfile line 3: ADAPTER ./fake-lora.gguf is not a LoRA adapter"),
    ("FROM pirate\n# tuned\nADAPTER ./qwen-lora.gguf\n",
     "Modelfile line 3: ADAPTER ./qwen-lora.gguf is for architecture 'qwen2', the model is 'llama'"),
    ("FROM pirate\nADAPTER ./nope.gguf\n", "Modelfile line 2: ADAPTER ./nope.gguf: no such file"),
    ("FROM pirate\nDRAFT ./lora.gguf\n", "DRAFT sha256:"),
])
def test_refusals_exit_2_with_one_line(world: dict, text: str, words: str) -> None:
    mf = world["tmp"] / "Modelfile.bad"
    mf.write_text(text)
    r = _dx(world["home"], "create", "bad", "-f", str(mf))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert words in r.stderr and "Traceback" not in r.stderr
    assert _dx(world["home"], "show", "bad").returncode != 0
