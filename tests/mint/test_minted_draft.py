"""A two-model executable for real: `dxbuild --model smollm2 --draft <a copy of it>` with the cached engine
and bundle; every entry verified, a flipped draft byte refused by `dx verify` and at start, an incompatible
draft refused before anything is written, and a one-model mint still version 1."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.files import flip_byte
from test_minted import Running, copy_fresh, engine_pids, fresh_env

from dxverify import trailer

pytestmark = pytest.mark.integration

EXE_NAME = f"dx-smollm2-cpu-linux-{platform.machine()}"


def _mint(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dxbuild", "--gpu", "cpu", "--model", "smollm2", "--no-bench",
                           "-o", str(out), *extra], capture_output=True, text=True, timeout=3600)


@pytest.fixture(scope="module")
def draft_copy(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    """SmolLM2 itself as the draft, under another path (same vocabulary: the pair check passes)."""
    d = tmp_path_factory.mktemp("draft") / "smollm2-draft.gguf"
    shutil.copyfile(smollm2_gguf, d)
    return d


@pytest.fixture(scope="module")
def two_model_dir(tmp_path_factory: pytest.TempPathFactory, mint_release_dir: Path, draft_copy: Path) -> Path:
    """mint_release_dir first: the engine and bundle are built (or found) once, this mint reuses them."""
    out = tmp_path_factory.mktemp("mint-draft")
    res = _mint(out, "--draft", str(draft_copy))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "draft smollm2-draft shares smollm2's vocabulary" in res.stderr
    return out


def test_two_model_layout_and_release_files(two_model_dir: Path, smollm2_gguf: Path, draft_copy: Path) -> None:
    exe = two_model_dir / EXE_NAME
    em = trailer.read_trailer(exe)
    assert em.version == 2 and [e.role for e in em.entries] == ["model", "draft"]
    size = smollm2_gguf.stat().st_size
    assert all(e.offset % trailer.ALIGNMENT == 0 and e.length == size for e in em.entries)
    assert em.draft.offset == trailer.aligned_offset(em.offset + em.length)
    assert em.draft.sha256 == em.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert em.metadata["draft"]["model"] == "smollm2-draft"
    assert em.metadata["draft"]["source"] == f"file:{draft_copy.resolve()}"
    with open(exe, "rb") as f:
        f.seek(em.draft.offset)
        assert f.read(1 << 20) == smollm2_gguf.read_bytes()[: 1 << 20]
    facts = json.loads((two_model_dir / f"{EXE_NAME}.json").read_text())
    assert facts["draft"]["name"] == "smollm2-draft" and facts["draft"]["sha256"] == em.draft.sha256
    manifest = json.loads((two_model_dir / "manifest.json").read_text())
    assert manifest["artifacts"][0]["draft"]["size"] == size
    from dxbuild.release.manifest import check_facts

    check_facts(facts, exe)
    bom = json.loads((two_model_dir / f"{EXE_NAME}.cdx.json").read_text())
    models = {c["bom-ref"]: c for c in bom["components"] if c["type"] == "machine-learning-model"}
    assert set(models) == {"model", "draft-model"} and models["draft-model"]["name"] == "smollm2-draft"
    report = json.loads((two_model_dir / "size-report.json").read_text())["artifacts"][0]
    assert report["ggufs"] == [{"role": "model", "bytes": size}, {"role": "draft", "bytes": size}]
    assert EXE_NAME in (two_model_dir / "SHA256SUMS").read_text()
    print(f"two-model executable {exe.stat().st_size} bytes = 2 x GGUF {size} + {exe.stat().st_size - 2 * size}")


def test_dx_verify_checks_every_entry(two_model_dir: Path) -> None:
    exe = two_model_dir / EXE_NAME
    res = subprocess.run([sys.executable, "-m", "dx", "verify", str(exe)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "draft:   'smollm2-draft'" in res.stdout and "SHA-256 matches its entry" in res.stdout
    assert "matches SHA256SUMS" in res.stdout
    res = subprocess.run([sys.executable, "-m", "dx", "inspect", str(exe)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "entries:        2 (trailer format version 2)" in res.stdout, res.stdout


def test_flipped_draft_byte_fails_verify_and_refuses_to_serve(two_model_dir: Path, tmp_path: Path) -> None:
    exe, home = copy_fresh(two_model_dir / EXE_NAME, tmp_path)
    em = trailer.read_trailer(exe)
    flip_byte(exe, em.draft.offset + em.draft.length - 4096)  # deep in the draft's tensor data
    res = subprocess.run([str(exe), "verify", str(exe)], capture_output=True, text=True, env=fresh_env(home),
                         timeout=300)
    assert res.returncode == 4, res.stdout + res.stderr
    assert "the draft entry ('smollm2-draft'" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([str(exe)], capture_output=True, text=True, env=fresh_env(home), timeout=300)
    assert res.returncode == 4, res.stdout + res.stderr
    assert "embedded draft 'smollm2-draft' does not match its recorded SHA-256" in res.stderr
    assert "Traceback" not in res.stderr and engine_pids(exe) == []


def _mapped_offsets(pid: int, path: Path) -> list[tuple[int, int]]:
    """(file offset, length) of every mapping of ``path`` in process ``pid``."""
    out = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].removesuffix(" (deleted)") == str(path):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((int(parts[2], 16), hi - lo))
    return out


def test_serves_with_the_embedded_draft_both_mapped_in_place(two_model_dir: Path, tmp_path: Path) -> None:
    """``serve --spec on``: the engine gets the embedded draft (FILE#offset=N) and maps both models out of the file.

    Forced: by default (``--spec auto``) DX times the draft at load and, on a CPU where it loses, serves
    without it (tests/runtime/engine/test_spec_auto.py)."""
    import openai

    exe, home = copy_fresh(two_model_dir / EXE_NAME, tmp_path)
    em = trailer.read_trailer(exe)
    with Running(exe, home, "serve", "--spec", "on") as run:
        client = openai.OpenAI(base_url=run.url + "/v1", api_key=run.key, timeout=120)
        chat = client.chat.completions.create(model="smollm2", max_tokens=16, temperature=0,
                                              messages=[{"role": "user", "content": "Count to five."}])
        assert chat.choices[0].message.content.strip()
        pids = engine_pids(exe)
        assert len(pids) == 1, pids
        argv = Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")
        assert f"{exe}#offset={em.offset}".encode() in argv
        assert argv[argv.index(b"--spec-draft-model") + 1] == f"{exe}#offset={em.draft.offset}".encode()
        maps = _mapped_offsets(pids[0], exe)
        for entry in em.entries:  # some mapping of the executable lies inside each GGUF's region
            assert any(off < entry.offset + entry.length and off + n > entry.offset for off, n in maps), \
                (entry, maps)


def test_one_model_mint_is_still_version_1(mint_release_dir: Path) -> None:
    exe = mint_release_dir / EXE_NAME
    em = trailer.read_trailer(exe)
    assert em.version == 1 and em.draft is None and len(em.entries) == 1
    res = subprocess.run([sys.executable, "-m", "dx", "verify", str(exe)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "draft" not in res.stdout, res.stdout + res.stderr


def _other_vocabulary(path: Path) -> Path:
    """A small GGUF with a SentencePiece ('llama') tokenizer: SmolLM2's is BPE ('gpt2')."""
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_name("other-vocab")
    w.add_tokenizer_model("llama")
    w.add_token_list([f"tok{i}" for i in range(64)])
    w.add_token_scores([0.0] * 64)
    w.add_token_types([1] * 64)
    w.add_tensor("token_embd.weight", np.zeros((64, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_incompatible_draft_is_refused_before_anything_is_written(mint_release_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _mint(out, "--draft", str(_other_vocabulary(tmp_path / "other.gguf")))
    assert res.returncode == 2, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "draft 'other-vocab' (other.gguf) is not compatible with target" in errors[0]
    assert "vocabulary type differs (bpe vs spm)" in errors[0]
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []
    assert "[3/" not in res.stderr  # stopped in the verify step: no engine, bundle or embed step ran


def test_draft_without_model_is_one_line(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "dxbuild", "--gpu", "cpu", "--draft", "smollm2", "--no-bench",
                          "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "error: --draft needs --model" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
