"""A mint stopped while it writes the executable leaves nothing in the output directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.waits import wait_until

pytestmark = pytest.mark.integration


def _big_gguf(path: Path, mb: int) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_name("interrupt-me")
    w.add_tensor("big.weight", np.frombuffer(os.urandom(mb << 20), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _big_gguf(tmp_path_factory.mktemp("big") / "big.gguf", 768)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stopped_while_embedding_leaves_no_file(tmp_path: Path, mint_release_dir: Path, big_model: Path,
                                                sig: signal.Signals) -> None:
    """mint_release_dir first: engine and bundle are cached, so the mint reaches the embed step at once."""
    model = big_model
    out = tmp_path / "out"
    # SIGINT as Ctrl-C delivers it in a terminal: the suite may run where SIGINT is ignored (a background
    # job of a script, some CI runners), which the child would inherit and Python would keep.
    proc = subprocess.Popen([sys.executable, "-m", "dxbuild", "--gpu", "cpu", "--model", str(model), "--no-bench",
                             "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def copying() -> bool:
        parts = list(out.glob(".dx-mint-*.part")) if out.is_dir() else []
        if proc.poll() is not None:
            raise AssertionError(f"dxbuild exited (rc {proc.returncode}) before it reached the model copy:\n"
                                 f"{proc.communicate()[1][-4000:]}")
        return bool(parts) and parts[0].stat().st_size > 64 << 20  # inside the model copy

    try:
        wait_until(copying, "dxbuild to be copying the model into .dx-mint-*.part", timeout=300, interval=0.005)
    except AssertionError:
        proc.kill()
        raise
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, err
    assert sorted(p.name for p in out.iterdir()) == [], err
