"""Open WebUI 0.12.4's model management against DX, clicked through in Chromium as an admin would.

Where 0.12.4 puts it (read in its source maps, src/lib/components/admin/Settings/Models/Manage/
ManageOllama.svelte, and open_webui/routers/ollama.py): Admin Settings > Models > Actions > Manage opens
"Manage Models" for the Ollama connection, with

* "Upload a GGUF model" (under "Experimental" > Show): the browser posts the file to Open WebUI's
  ``/ollama/models/upload``, which hashes it and calls ``POST /api/blobs/sha256:<hex>`` then
  ``POST /api/create {"model": <file name less .gguf>, "files": {<file name>: <digest>}, "stream": false}``;
* "Create a model": a name and a JSON object sent as is to ``POST /api/create`` (``from``, ``system``, ...),
  the status lines streamed back (Open WebUI toasts each one that is not a layer or "writing ...");
* "Delete a model": ``DELETE /api/delete {"name", "model"}``.

The workspace model editor (src/lib/components/workspace/Models/ModelEditor.svelte: ``modelInfo.params
.system`` saved by ``/api/v1/models/create``) does not call ``/api/create``: it keeps a preset over a
base model in Open WebUI's own database and sends its system prompt as the chat's first message.

The tests run in file order, one flow: upload (twice: the second time DX has the blob), create, chat,
preset, delete. They share the session's
Open WebUI and DX (tests/clients/conftest.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from support.minted_server import MintedServer
from support.open_webui import WebUI, latest_chat, new_page, open_page, send, wait_answered

from dxverify.hashing import sha256_file

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]

UPLOADED = "smollm2-upload"  # Open WebUI names the model after the file, less its extension
AGAIN = "smollm2-again"  # the same file under another name
CREATED = "pirate"
# A system prompt SmolLM2-135M at temperature 0 measurably follows: asked for three colours it talks of
# pirates (without it, it lists red, blue, green and never says "pirate").
SYSTEM = "You are a pirate. Always answer like a pirate and say Arrr."
QUESTION = "Name three colours."
PRESET = "Pirate preset"


def dx_names(dx: MintedServer) -> list[str]:
    r = httpx.get(f"{dx.url}/api/tags", headers=dx.headers, timeout=60)
    assert r.status_code == 200, r.text
    return [m["name"] for m in r.json()["models"]]


def dx_store(dx: MintedServer) -> Path:
    """DX's store of the server (its HOME's ~/.dx/models)."""
    return dx.home / ".dx" / "models"


def dx_answer(dx: MintedServer, model: str, messages: list[dict[str, str]]) -> str:
    r = httpx.post(f"{dx.url}/api/chat", headers=dx.headers, timeout=300, json={
        "model": model, "messages": messages, "stream": False,
        "options": {"temperature": 0, "seed": 7, "num_predict": 16}})
    assert r.status_code == 200, r.text
    return str(r.json()["message"]["content"])


def manage_models(browser, webui: WebUI):  # type: ignore[no-untyped-def]
    """Admin Settings > Models > Actions > Manage: the "Manage Models" dialog, loaded."""
    page = new_page(browser, webui, "/admin/settings/models")
    page.get_by_role("button", name="Actions").click()
    page.get_by_role("menuitem", name="Manage").or_(page.get_by_role("button", name="Manage", exact=True)).first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Delete a model").wait_for(timeout=60_000)
    return page, dialog


def upload(browser, webui: WebUI, gguf: Path) -> None:  # type: ignore[no-untyped-def]
    """"Upload a GGUF model" (under "Experimental"): pick the file, upload, wait for Open WebUI's success toast."""
    page, dialog = manage_models(browser, webui)
    dialog.get_by_role("button", name="Show", exact=True).click()  # "Experimental"
    with page.expect_file_chooser() as chooser:
        dialog.get_by_role("button", name="Click here to select").click()
    chooser.value.set_files(str(gguf))
    form = dialog.locator("form").filter(has_text="Upload a GGUF model")
    with page.expect_response(lambda r: "/ollama/models/upload" in r.url, timeout=120_000) as sent:
        form.locator("button[type=submit]").click()
    assert sent.value.status == 200, sent.value.text()
    events = [json.loads(line.removeprefix("data: ")) for line in sent.value.text().splitlines() if line.strip()]
    assert events[-1].get("done") and events[-1]["model_created"] == gguf.stem, events[-1]  # no "error" event
    page.get_by_text("Model created successfully!").wait_for(timeout=60_000)
    page.context.close()


def test_upload_a_gguf_through_manage_models(webui: WebUI, browser, dx: MintedServer,  # type: ignore[no-untyped-def]
                                             smollm2_gguf: Path, tmp_path: Path) -> None:
    """Open WebUI's upload: ``POST /api/blobs`` (201) then ``/api/create`` with ``files``."""
    gguf = tmp_path / f"{UPLOADED}.gguf"
    shutil.copyfile(smollm2_gguf, gguf)
    digest = sha256_file(gguf)
    blob = dx_store(dx) / "blobs" / f"sha256-{digest}"
    assert not blob.exists()
    upload(browser, webui, gguf)
    assert f"{UPLOADED}:latest" in dx_names(dx)
    assert blob.stat().st_size == gguf.stat().st_size and sha256_file(blob) == digest  # byte-identical
    r = httpx.head(f"{dx.url}/api/blobs/sha256:{digest}", headers=dx.headers, timeout=60)
    assert r.status_code == 200


def test_upload_the_same_gguf_under_another_name(webui: WebUI, browser, dx: MintedServer,  # type: ignore[no-untyped-def]
                                                 smollm2_gguf: Path, tmp_path: Path) -> None:
    """DX has the blob: its ``POST /api/blobs`` is a 200 that Open WebUI (aiohttp, the whole body written
    first) must see, and the second name points at the same blob (no copy). Whether aiohttp's write failed
    when DX closed the connection under it depended on timing; tests/runtime/server/test_blob_reupload.py
    pins that over raw HTTP."""
    gguf = tmp_path / f"{AGAIN}.gguf"
    shutil.copyfile(smollm2_gguf, gguf)
    blobs = sorted(p.name for p in (dx_store(dx) / "blobs").iterdir())
    upload(browser, webui, gguf)
    assert f"{AGAIN}:latest" in dx_names(dx)
    assert sorted(p.name for p in (dx_store(dx) / "blobs").iterdir()) == blobs


def test_create_a_model_with_a_system_prompt_through_manage_models(webui: WebUI, browser,  # type: ignore[no-untyped-def]
                                                                   dx: MintedServer) -> None:
    """"Create a model" sends ``{"model", "from", "system"}`` to DX's /api/create and shows its status lines."""
    page, dialog = manage_models(browser, webui)
    dialog.get_by_placeholder("Enter model tag (e.g. my-modelfile)").fill(CREATED)
    dialog.locator("textarea").fill(json.dumps({"from": UPLOADED, "system": SYSTEM}))
    with page.expect_response(lambda r: "/ollama/api/create" in r.url, timeout=120_000) as create:
        dialog.get_by_role("button", name="Create Model").click()
    lines = [json.loads(line) for line in create.value.text().splitlines() if line.strip()]
    assert create.value.status == 200 and lines[-1] == {"status": "success"}, lines
    page.get_by_text("success", exact=True).wait_for(timeout=60_000)  # Open WebUI's toast of the last line
    page.context.close()
    assert f"{CREATED}:latest" in dx_names(dx)
    shown = httpx.post(f"{dx.url}/api/show", headers=dx.headers, timeout=60, json={"model": CREATED}).json()
    assert shown["system"] == SYSTEM, shown


def test_chat_with_the_created_model_follows_its_system_prompt(webui: WebUI, browser, dx: MintedServer) -> None:  # type: ignore[no-untyped-def]
    """The chat streams, and the model's SYSTEM (kept by DX, not sent by Open WebUI) shapes the answer."""
    user = [{"role": "user", "content": QUESTION}]
    assert "pirate" not in dx_answer(dx, UPLOADED, user).lower()  # the base model alone does not say it
    assert "pirate" in dx_answer(dx, CREATED, user).lower()
    # Open WebUI's built-in tools (~8,000 tokens of schemas) off for this model, as its model settings do
    # (see test_open_webui.py: they do not fit SmolLM2's context)
    r = httpx.post(f"{webui.url}/api/v1/models/create", headers=webui.headers, timeout=60, json={
        "id": f"{CREATED}:latest", "name": f"{CREATED}:latest",
        "meta": {"capabilities": {"builtin_tools": False}}, "params": {}})
    assert r.status_code == 200, r.text
    page = open_page(browser, webui, f"/?model={CREATED}:latest")
    send(page, QUESTION)
    shown = wait_answered(page)
    growing = [s for s in shown if s.strip()]
    assert len(growing) >= 3, f"the answer did not stream: {shown}"
    assert "pirate" in shown[-1].lower(), shown[-1]
    page.context.close()
    sent = latest_chat(webui)["chat"]["messages"]
    assert not any(m["role"] == "system" for m in sent), sent  # the system prompt came from DX's model


def test_a_workspace_model_sends_its_system_prompt(webui: WebUI, browser, dx: MintedServer) -> None:  # type: ignore[no-untyped-def]
    """Workspace > Models > New: a name, the uploaded model as its base, a system prompt, built-in tools
    off, Save & Create. Open WebUI keeps it in its own database (``/api/v1/models/create``; DX gets no new
    model) and sends the system prompt with each chat: the answer follows it."""
    before = dx_names(dx)
    page = new_page(browser, webui, "/workspace/models/create")
    page.get_by_placeholder("Model Name").fill(PRESET)
    page.get_by_role("button", name="Select a base model").click()
    page.get_by_role("option").filter(has_text=f"{UPLOADED}:latest").first.click()
    page.get_by_role("textbox", name="System Prompt").fill(SYSTEM)
    page.get_by_text("Capabilities", exact=True).click()
    builtin = page.get_by_role("switch", name="Builtin Tools")
    if builtin.get_attribute("aria-checked") == "true":
        builtin.click()
    with page.expect_request(lambda r: "/api/v1/models/create" in r.url) as saved:
        page.get_by_role("button", name="Save & Create").click()
    assert saved.value.response().status == 200  # type: ignore[union-attr]
    sent = saved.value.post_data_json
    assert (sent["base_model_id"], sent["params"]["system"]) == (f"{UPLOADED}:latest", SYSTEM), sent
    assert sent["meta"]["capabilities"]["builtin_tools"] is False, sent
    page.context.close()
    page = open_page(browser, webui, f"/?model={sent['id']}")
    assert PRESET in page.locator("#model-selector-model-button").inner_text(timeout=30_000)
    send(page, QUESTION)
    shown = wait_answered(page)
    assert "pirate" in shown[-1].lower(), shown[-1]
    page.context.close()
    assert dx_names(dx) == before


def test_delete_the_created_model_through_manage_models(webui: WebUI, browser, dx: MintedServer,  # type: ignore[no-untyped-def]
                                                        smollm2_gguf: Path) -> None:
    """Its manifest goes; the blob stays, the uploaded model still names it."""
    manifest = dx_store(dx) / "manifests" / f"{CREATED}%3Alatest.json"
    assert manifest.is_file()
    page, dialog = manage_models(browser, webui)
    select = dialog.locator("select").filter(has=page.locator("option", has_text=f"{CREATED}:latest"))
    (label,) = [t for t in select.locator("option").all_inner_texts() if t.startswith(f"{CREATED}:latest ")]
    select.select_option(label=label)
    dialog.get_by_role("button", name="Delete Model").click()
    with page.expect_response(lambda r: "/ollama/api/delete" in r.url, timeout=60_000) as deleted:
        page.get_by_role("button", name="Confirm").click()
    assert deleted.value.status == 200, deleted.value.text()
    page.get_by_text(f"Deleted {CREATED}:latest").wait_for(timeout=60_000)
    page.context.close()
    names = dx_names(dx)
    assert f"{CREATED}:latest" not in names and f"{UPLOADED}:latest" in names and f"{AGAIN}:latest" in names, names
    assert not manifest.exists()
    assert (dx_store(dx) / "blobs" / f"sha256-{sha256_file(smollm2_gguf)}").is_file()
