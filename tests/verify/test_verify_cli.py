"""`dx verify` and `dx inspect` through the real CLI: exit codes, one-line errors, JSON shape."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from support.gguf_handcraft import tiny_model

from dx.cli import cli
from dxverify.cli_errors import run_cli

TINY = tiny_model().build()


def dx(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = run_cli(cli, "dx", [str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def model(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.gguf"
    p.write_bytes(TINY.data)
    return p


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_valid_model(capsys, model: Path) -> None:  # type: ignore[no-untyped-def]
    code, out, err = dx(capsys, "verify", model)
    assert code == 0, err
    assert "OK" in out and hashlib.sha256(TINY.data).hexdigest() in out


def test_json_report(capsys, model: Path) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = dx(capsys, "verify", "--json", model)
    assert code == 0
    doc = json.loads(out)
    assert doc["ok"] is True and doc["errors"] == []
    assert doc["sha256"] == hashlib.sha256(TINY.data).hexdigest()
    s = doc["summary"]
    assert (s["architecture"], s["name"], s["tensor_count"], s["vocab_size"]) == ("llama", "tiny", 3, 8)
    assert s["chat_template"] is True and s["context_length"] == 128


def test_expected_hash_from_flag(capsys, model: Path) -> None:  # type: ignore[no-untyped-def]
    good = hashlib.sha256(TINY.data).hexdigest()
    assert dx(capsys, "verify", "--sha256", good.upper(), model)[0] == 0
    code, _, err = dx(capsys, "verify", "--sha256", "0" * 64, model)
    assert code == 4
    assert "SHA-256 mismatch" in one_error_line(err)
    code, out, _ = dx(capsys, "verify", "--json", "--sha256", "0" * 64, model)
    doc = json.loads(out)
    assert code == 4 and doc["ok"] is False and doc["errors"][0]["code"] == "sha256_mismatch"
    assert doc["sha256"] == good


def test_bad_sha256_flag_is_a_usage_error(capsys, model: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = dx(capsys, "verify", "--sha256", "nothex", model)
    assert code == 2 and "--sha256" in one_error_line(err)


def test_expected_hash_from_blob_name_and_sha256sums(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = hashlib.sha256(TINY.data).hexdigest()
    blob = tmp_path / f"sha256-{good}"
    blob.write_bytes(TINY.data)
    code, out, _ = dx(capsys, "verify", blob)
    assert code == 0 and "matches file name" in out
    liar = tmp_path / f"sha256-{'1' * 64}"
    liar.write_bytes(TINY.data)
    assert dx(capsys, "verify", liar)[0] == 4
    rel = tmp_path / "rel"
    rel.mkdir()
    (rel / "m.gguf").write_bytes(TINY.data)
    (rel / "SHA256SUMS").write_text(f"{good}  m.gguf\n{'2' * 64}  other.gguf\n")
    code, out, _ = dx(capsys, "verify", rel / "m.gguf")
    assert code == 0 and "matches SHA256SUMS" in out
    (rel / "other.gguf").write_bytes(TINY.data)
    assert dx(capsys, "verify", rel / "other.gguf")[0] == 4


def test_malformed_is_exit_3_with_field_and_offset(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    at, _ = TINY.fields["t1.n_dims"]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(TINY.data[:at] + (7).to_bytes(4, "little") + TINY.data[at + 4 :])
    code, _, err = dx(capsys, "verify", bad)
    line = one_error_line(err)
    assert code == 3
    assert f"at byte {at}" in line and "n_dims" in line and str(bad) in line
    code, out, _ = dx(capsys, "verify", "--json", bad)
    doc = json.loads(out)
    assert code == 3 and doc["ok"] is False and doc["sha256"] is None
    assert doc["errors"] == [
        {
            "code": "bad_n_dims",
            "message": doc["errors"][0]["message"],
            "offset": at,
            "field": doc["errors"][0]["field"],
        }
    ]
    assert set(doc) >= {"ok", "errors", "sha256", "summary"}


@pytest.mark.parametrize("kind", ["empty", "directory", "missing", "fifo", "devnull", "text", "magic_only"])
def test_any_input_gets_one_line(capsys, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "x"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "directory":
        p.mkdir()
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "devnull":
        p = Path("/dev/null")
    elif kind == "text":
        p.write_text("hello world\n" * 100)
    elif kind == "magic_only":
        p.write_bytes(b"GGUF")  # CVE-2024-39720: the 4-byte blob
    for command in ("verify", "inspect"):
        code, _, err = dx(capsys, command, p)
        assert code == 3, err
        one_error_line(err)
        code, out, _ = dx(capsys, command, "--json", p)
        assert code == 3 and json.loads(out)["ok"] is False


def test_inspect(capsys, model: Path) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = dx(capsys, "inspect", model)
    assert code == 0
    for needle in ("architecture:   llama", "name:           tiny", "vocabulary:     8", "chat template:  yes",
                   "context length: 128", "Q4_1", "Q8_0", "F32", "3 tensors"):  # fmt: skip
        assert needle in out, needle
    code, out, _ = dx(capsys, "inspect", "--json", model)
    assert json.loads(out)["summary"]["parameters"] == 32 * 8 + 5 + 64 * 2
    assert json.loads(out)["sha256"] is None  # inspect never hashes
    code, out, _ = dx(capsys, "verify", "--inspect", model)
    assert code == 0 and "architecture:   llama" in out and "sha256:" in out


def test_gigabyte_sparse_model_is_checked_without_reading_it(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from support.gguf_handcraft import Tensor

    c = tiny_model()
    c.tensors = [Tensor("big.weight", [1024, 1024 * 1024], 0)]  # 4 GiB of F32
    c.data_bytes = 0
    built = c.build()
    p = tmp_path / "big.gguf"
    with open(p, "wb") as fh:
        fh.write(built.data)
        fh.truncate(len(built.data) + 4 * 1024**3)  # sparse: no disk blocks
    code, out, err = dx(capsys, "verify", "--no-hash", "--json", p)
    assert code == 0, out + err
    doc = json.loads(out)
    assert doc["summary"]["parameters"] == 1024**3 and doc["sha256"] is None
    with open(p, "r+b") as fh:
        fh.truncate(len(built.data) + 4 * 1024**3 - 1)
    code, _, err = dx(capsys, "verify", "--no-hash", p)
    assert code == 3 and "tensor_out_of_bounds" in one_error_line(err)


def test_the_installed_dx_command(model: Path, tmp_path: Path) -> None:
    """The console script itself: exit codes survive the process boundary, stderr is one line."""
    ok = subprocess.run(["dx", "verify", model], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    mismatch = subprocess.run(["dx", "verify", "--sha256", "f" * 64, model], capture_output=True, text=True)
    assert mismatch.returncode == 4 and len(mismatch.stderr.strip().splitlines()) == 1
    empty = tmp_path / "e.gguf"
    empty.write_bytes(b"")
    bad = subprocess.run(["dx", "verify", empty], capture_output=True, text=True)
    assert bad.returncode == 3 and bad.stderr.startswith("dx: error:") and "Traceback" not in bad.stderr


def mint_like(tmp_path: Path, model_bytes: bytes) -> Path:
    """An executable laid out by dxverify.trailer (runtime + padding + GGUF + trailer), without Nuitka."""
    from dxverify import trailer

    runtime = tmp_path / "runtime"
    runtime.write_bytes(b"\x7fELF" + os.urandom(5000))
    model = tmp_path / "model.gguf"
    model.write_bytes(model_bytes)
    exe = tmp_path / "dx-tiny"
    meta = {"model": "tiny", "source": "test", "sha256": hashlib.sha256(TINY.data).hexdigest(), "tier": "cpu",
            "dx_version": "0", "llama_cpp_commit": "0c1e570"}  # fmt: skip
    with open(exe, "wb") as fh:
        trailer.write_executable(runtime, model, fh, meta)
    return exe


def test_verify_a_minted_layout(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exe = mint_like(tmp_path, TINY.data)
    code, out, err = dx(capsys, "verify", "--json", exe)
    doc = json.loads(out)
    assert code == 0, out + err
    assert doc["kind"] == "executable" and doc["expected_from"] == "trailer"
    assert doc["sha256"] == hashlib.sha256(TINY.data).hexdigest()
    assert doc["summary"]["embedded_at"] == 65536 and doc["summary"]["name"] == "tiny"


def test_minted_layout_with_damaged_model(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exe = mint_like(tmp_path, TINY.data)
    data = bytearray(exe.read_bytes())
    data[65536 + TINY.fields["data"][0] + 5] ^= 0xFF  # a weight byte: structure fine, hash not
    exe.write_bytes(bytes(data))
    code, _, err = dx(capsys, "verify", exe)
    assert code == 4 and "SHA-256 mismatch" in one_error_line(err)
    at, _ = TINY.fields["t0.n_dims"]
    data[65536 + at] = 9  # a header byte: malformed, reported at its offset in the executable
    exe.write_bytes(bytes(data))
    code, _, err = dx(capsys, "verify", exe)
    assert code == 3 and f"at byte {65536 + at}" in one_error_line(err)
    exe = mint_like(tmp_path, TINY.data)
    data = bytearray(exe.read_bytes())
    data[100] ^= 0xFF  # the runtime part
    exe.write_bytes(bytes(data))
    code, out, _ = dx(capsys, "verify", "--json", exe)
    assert code == 4 and json.loads(out)["errors"][0]["code"] == "runtime_mismatch"
