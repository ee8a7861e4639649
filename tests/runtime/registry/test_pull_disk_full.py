"""A disk that fills up mid-pull: a clean 507-class error, the partial kept for the resume, no stray state file.

Found by the soak run (tests/bench/soak.py): ENOSPC from the blob's pwrite reached the
server as a bare OSError, so /api/pull's NDJSON stream was cut without an error line, and
the state file's ``.tmp`` stayed behind; and every finished pull left an empty ``.lock`` file. The disk is filled here with RLIMIT_FSIZE (EFBIG,
the same path as ENOSPC; CPython ignores SIGXFSZ), lowered for this process and restored.
"""

from __future__ import annotations

import hashlib
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.gguf_handcraft import Tensor, tiny_model
from support.ollama_registry_server import FakeRegistry

from dx.errors import DiskFullError
from dx.registry import ollama as reg


def _blob() -> bytes:
    g = tiny_model()
    g.tensors.append(Tensor("blk.0.ffn_up.weight", [1024, 1024], 0))  # 4 MiB
    return g.build().data


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRegistry]:
    r = FakeRegistry()
    r.add_model("library/fills", "latest", _blob())
    r.start()
    monkeypatch.setenv("DX_OLLAMA_REGISTRY", r.url)
    monkeypatch.delenv("DX_OLLAMA_TOKEN", raising=False)
    yield r
    r.stop()


def test_a_full_disk_mid_pull_is_a_disk_full_error_and_the_pull_then_resumes(
        registry: FakeRegistry, tmp_path: Path) -> None:
    data = _blob()
    hexd = hashlib.sha256(data).hexdigest()
    name = reg.parse_registry_name("fills")
    layer = reg.fetch_manifest(name).model_layer("x")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))  # writes past 1 MiB fail: the disk is "full"
    try:
        with pytest.raises(DiskFullError) as ei:
            reg.download_blob(name, layer, tmp_path, parts=1)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert ei.value.http_status == 507 and "disk filled up" in str(ei.value) and str(tmp_path) not in str(ei.value)
    assert not list(tmp_path.glob("*.tmp")), "a state file's .tmp was left behind"
    got = reg.download_blob(name, layer, tmp_path, parts=1)  # space again: the same pull completes
    assert hashlib.sha256(got.read_bytes()).hexdigest() == hexd
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.state.json"))
    assert not list(tmp_path.glob("*.lock")), "a finished pull left its lock file"
