"""dx.errors.client_text: what a client may read of an error line — the model's name where its file was, no
server path — and the HTTP statuses the pull errors carry."""

from __future__ import annotations

from dx.errors import DownloadError, InvalidModelNameError, ModelConflictError, client_text, http_answer


def test_a_models_file_becomes_its_name_and_other_server_paths_go() -> None:
    text = ("engine exited while loading: gguf_init_from_file: failed to open '/srv/x/home/.dx/models/blobs/"
            "sha256-ab' | see /srv/x/home/.dx/logs/engine-m.log and /opt/dx/engine/bin/llama-server")
    out = client_text(text, {"/srv/x/home/.dx/models/blobs/sha256-ab": "smol:latest"}, roots=["/srv/x/home"])
    assert "smol:latest" in out and "/srv" not in out and "/opt" not in out
    assert out.count("…") == 2


def test_urls_and_plain_words_stay() -> None:
    text = "pulling x from http://127.0.0.1:8080/v2/library/x failed: 1/2 parts, HTTP 404"
    assert client_text(text) == text


def test_pull_failures_are_client_or_upstream_statuses_never_500() -> None:
    assert http_answer(DownloadError("registry unreachable"))[0] == 502
    assert http_answer(InvalidModelNameError("bad"))[0] == 400
    assert http_answer(ModelConflictError("served")) == (409, "conflict_error")
