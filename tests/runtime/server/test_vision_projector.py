"""Real vision through a projector: SmolLM2 + a tiny random-weight CLIP projector, served by the real engine.

No projector can be downloaded here, so ``support.tiny_projector`` makes one (LLaVA-style ``mlp``, 28x28
images, projecting to SmolLM2's 576 wide embeddings). The weights are random: the answers are nonsense,
and that is fine — these tests prove that an image reaches the engine through the projector (the engine
loads it with ``--mmproj``, counts the image's tokens into the prompt and answers 200), not that the model
sees anything.

Two ways a projector comes with a model, one module-scoped server each:
- ``beside``: ``dx serve /dir/smollm2.gguf`` with an ``mmproj-*.gguf`` in the same folder;
- ``embedded``: a file laid out like a minted executable with the projector as its "projector" trailer
  entry (fake runtime bytes + the real SmolLM2 + the real trailer writer, served through
  ``DX_SELF_EXECUTABLE`` as a compiled ``dx`` finds itself; no mint). The engine gets the projector
  extracted once to a verified cache file (its loader cannot read at an offset).
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.fake_minted import fake_minted
from support.serve_harness import DXServer, engine_binary, start_dx
from support.tiny_projector import IMAGE_SIZE, PATCH_SIZE, tiny_png, write_tiny_projector

pytestmark = pytest.mark.integration

FAST = {"num_predict": 6, "temperature": 0, "seed": 7}
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
PNG = base64.b64encode(tiny_png()).decode()


@pytest.fixture(scope="module", params=["beside", "embedded"])
def vision(request: pytest.FixtureRequest, smollm2_gguf: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, DXServer, str]]:
    """(kind, server, model name) for a server whose one model has the tiny projector."""
    tmp = tmp_path_factory.mktemp(f"vision-{request.param}")
    engine = engine_binary(request)
    if request.param == "beside":
        folder = tmp / "models"
        folder.mkdir()
        model = folder / "smollm2-135m.gguf"
        try:
            os.link(smollm2_gguf, model)
        except OSError:
            shutil.copyfile(smollm2_gguf, model)
        write_tiny_projector(folder / "mmproj-smollm2-135m.gguf")
        server = start_dx(tmp, "--ctx", "2048", "--parallel", "1", engine=engine, model=str(model), timeout=120)
    else:
        proj = write_tiny_projector(tmp / "mmproj-tiny.gguf")
        exe = fake_minted(tmp / "dx-smollm2-cpu-linux-x86_64", smollm2_gguf, projector=(proj, "mmproj-tiny"))
        proj.unlink()  # only the copy inside the executable is left
        server = start_dx(tmp, "--ctx", "2048", "--parallel", "1", engine=engine,
                          env={"DX_SELF_EXECUTABLE": str(exe)}, timeout=120)
    try:
        tags = httpx.get(f"{server.url}/api/tags", headers=server.headers, timeout=30).json()["models"]
        yield request.param, server, tags[0]["name"]
    finally:
        server.stop()


def engine_log(server: DXServer) -> str:
    logs = sorted(p for p in (server.home / "logs").glob("engine-*.log") if "-embed" not in p.name)
    assert logs, f"no engine log in {server.home / 'logs'}"
    return logs[-1].read_text(errors="replace")


def test_show_lists_vision(vision: tuple[str, DXServer, str]) -> None:
    _, server, name = vision
    r = httpx.post(f"{server.url}/api/show", json={"model": name}, headers=server.headers, timeout=30)
    assert r.status_code == 200, r.text
    assert "vision" in r.json()["capabilities"], r.json()["capabilities"]


def test_api_chat_with_an_image_goes_through_the_projector(vision: tuple[str, DXServer, str]) -> None:
    """200 and an answer (nonsense: random projector weights); the engine loaded the projector given it."""
    kind, server, name = vision
    r = httpx.post(f"{server.url}/api/chat", headers=server.headers, timeout=180, json={
        "model": name, "stream": False, "options": FAST,
        "messages": [{"role": "user", "content": "What is in this picture?", "images": [PNG]}]})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["done"] is True and isinstance(doc["message"]["content"], str) and doc["eval_count"] >= 1, doc
    log = engine_log(server)
    argv = log.splitlines()[0]
    assert " --mmproj " in argv, argv
    projector = argv.split(" --mmproj ", 1)[1].split(" ", 1)[0]
    if kind == "embedded":  # the verified extract, not the executable
        assert "/cache/projectors/sha256-" in projector and projector.endswith(".gguf"), argv
    else:
        assert projector.endswith("mmproj-smollm2-135m.gguf"), argv
    assert f"loaded multimodal model, '{projector}'" in log, log[-3000:]


def test_openai_image_url_counts_the_image_tokens(vision: tuple[str, DXServer, str]) -> None:
    """/v1/chat/completions with an ``image_url`` data URL: 200, and the prompt grows by the image's tokens."""
    _, server, name = vision

    def ask(content: object) -> dict:
        r = httpx.post(f"{server.url}/v1/chat/completions", headers=server.headers, timeout=180, json={
            "model": name, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": content}]})
        assert r.status_code == 200, r.text
        return r.json()

    text = {"type": "text", "text": "Describe it."}
    with_image = ask([text, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}])
    without = ask([text])
    assert isinstance(with_image["choices"][0]["message"]["content"], str)
    grown = with_image["usage"]["prompt_tokens"] - without["usage"]["prompt_tokens"]
    assert grown >= IMAGE_TOKENS, (with_image["usage"], without["usage"])
