"""A created model's load-time ``PARAMETER``s get their own engine (found by the soak run).

The real engine and SmolLM2, one server with one slot per engine and no ``--ctx`` (so a model's own
``num_ctx`` is its context): ``ctx-a`` is SmolLM2 as uploaded, ``ctx-b`` the same blob created with
``num_ctx 1024``, ``ctx-c`` created from ``ctx-a`` with nothing changed. After each answered once,
/api/ps lists two engines with their own ``context_length`` and there are two ``llama-server``
children whose ``-c`` says so; ``ctx-c`` answered from ``ctx-a``'s engine.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support.serve_harness import DXServer, engine_binary, start_dx

from dx.engine.process import DEFAULT_CTX_PER_SLOT

pytestmark = pytest.mark.integration

SMALL = 1024


@pytest.fixture(scope="module")
def dx(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    server = start_dx(tmp_path_factory.mktemp("ctxkey"), "--parallel", "1", "--max-loaded", "4",
                      engine=engine_binary(request))
    yield server
    server.stop()


def _ctx_args(dx: DXServer) -> list[int]:
    """The ``-c`` of every llama-server this server runs (one slot each: the context per slot)."""
    out = []
    for pid in dx.children():
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        out.append(int(argv[argv.index("-c") + 1]))
    return sorted(out)


def test_num_ctx_of_a_created_model_gets_its_own_engine(dx: DXServer, smollm2_gguf: Path) -> None:
    oll = dx.ollama(timeout=180)
    digest = oll.create_blob(smollm2_gguf)
    assert oll.create(model="ctx-a", files={"SmolLM2-135M.gguf": digest}).status == "success"
    assert oll.create(model="ctx-b", from_="ctx-a", parameters={"num_ctx": SMALL}).status == "success"
    assert oll.create(model="ctx-c", from_="ctx-a").status == "success"  # the same options as ctx-a

    for name in ("ctx-a", "ctx-b", "ctx-c"):
        assert oll.generate(model=name, prompt="hi", options={"num_predict": 2}).done

    ps = httpx.get(f"{dx.url}/api/ps", headers=dx.headers, timeout=30).json()["models"]
    assert sorted(m["context_length"] for m in ps) == [SMALL, DEFAULT_CTX_PER_SLOT], ps
    by_ctx = {m["context_length"]: m["name"] for m in ps}
    assert by_ctx[SMALL].startswith("ctx-b")
    assert by_ctx[DEFAULT_CTX_PER_SLOT].startswith("ctx-a")  # ctx-c shares it: no third engine
    assert _ctx_args(dx) == [SMALL, DEFAULT_CTX_PER_SLOT]


def test_a_requests_num_ctx_still_reloads_the_models_own_engine(dx: DXServer) -> None:
    oll = dx.ollama(timeout=180)
    assert oll.generate(model="ctx-b", prompt="hi", options={"num_predict": 2, "num_ctx": 2048}).done
    ps = httpx.get(f"{dx.url}/api/ps", headers=dx.headers, timeout=30).json()["models"]
    assert sorted(m["context_length"] for m in ps) == [2048, DEFAULT_CTX_PER_SLOT], ps
    assert _ctx_args(dx) == [2048, DEFAULT_CTX_PER_SLOT]
