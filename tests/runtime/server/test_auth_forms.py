"""The API key in every form clients send it (dx.server.auth.key_matches), and the wire's error shapes
for Anthropic's route: pure functions, no server."""

from __future__ import annotations

import base64

import pytest

from dx.server.auth import KEY_FORMS, key_matches
from dx.server.wire import Headers, api_of, error_doc

KEY = "dx-s3cret_Key-0123456789"


def _h(*fields: tuple[str, str]) -> Headers:
    return Headers(list(fields))


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("headers", [
    _h(("Authorization", f"Bearer {KEY}")),
    _h(("authorization", f"bearer {KEY}")),  # names and the scheme are case-insensitive
    _h(("X-Api-Key", KEY)),  # the anthropic SDK, llama.cpp
    _h(("x-api-key", f"  {KEY} ")),
    _h(("Authorization", _basic("anyone", KEY))),  # http://anyone:KEY@host (LangChain)
    _h(("Authorization", _basic("", KEY))),  # no user at all
    _h(("Authorization", "BASIC " + base64.b64encode(f"u:{KEY}".encode()).decode())),
    _h(("Authorization", "Bearer wrong"), ("X-Api-Key", KEY)),  # one right form is enough
    _h(("Authorization", _basic("u", KEY)), ("X-Api-Key", "wrong")),
])
def test_every_form_of_the_key_is_accepted(headers: Headers) -> None:
    assert key_matches(headers, KEY)


@pytest.mark.parametrize("headers", [
    _h(),
    _h(("Authorization", "")),
    _h(("Authorization", "Bearer")),
    _h(("Authorization", "Bearer ")),
    _h(("Authorization", f"Bearer {KEY}x")),
    _h(("Authorization", f"Bearer {KEY[:-1]}")),
    _h(("Authorization", f"Token {KEY}")),  # an unknown scheme
    _h(("Authorization", KEY)),  # no scheme
    _h(("Authorization", f"Basic {KEY}")),  # not base64 of user:password
    _h(("Authorization", "Basic !!!not-base64!!!")),  # malformed: refused, never an exception
    _h(("Authorization", "Basic " + base64.b64encode(KEY.encode()).decode())),  # no ':' in it
    _h(("Authorization", _basic(KEY, "password"))),  # the key as the user name is not the password
    _h(("Authorization", "Basic " + base64.b64encode(b"u:\xff\xfe").decode())),  # not UTF-8
    _h(("X-Api-Key", "")),
    _h(("X-Api-Key", "wrong")),
    _h(("X-Api-Key", f"Bearer {KEY}")),  # X-Api-Key carries the bare key
    _h(("Api-Key", KEY)),  # Azure's header is not one of DX's forms
    _h(("Authorization", "Bearer caf\u00e9")),  # non-ASCII compared, not crashed on
])
def test_wrong_or_malformed_keys_are_refused(headers: Headers) -> None:
    assert not key_matches(headers, KEY)


def test_the_401_message_names_every_form_and_no_key() -> None:
    for form in ("Authorization: Bearer", "X-Api-Key", "Basic"):
        assert form in KEY_FORMS
    assert "dx-" not in KEY_FORMS


def test_anthropic_route_errors_in_anthropic_shape() -> None:
    assert api_of("/v1/messages") == api_of("/v1/messages/count_tokens?beta=true") == "anthropic"
    assert api_of("/v1/chat/completions") == "openai" and api_of("/api/chat") == "ollama"
    assert error_doc("anthropic", 401, "no key", "authentication_error") == {
        "type": "error", "error": {"type": "authentication_error", "message": "no key"}}
    kinds = {status: error_doc("anthropic", status, "m", kind)["error"]["type"] for status, kind in
             ((400, "invalid_request_error"), (404, "not_found_error"), (409, "conflict_error"),
              (413, "invalid_request_error"), (429, "invalid_request_error"), (500, "server_error"),
              (503, "server_error"))}
    assert kinds == {400: "invalid_request_error", 404: "not_found_error", 409: "invalid_request_error",
                     413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 503: "overloaded_error"}
