"""Browser login on the wire: the printed one-time URL sets a session cookie; the cookie is Host- and
Origin-checked and never lets another site act. Raw HTTP against a real `dx serve` (no engine needed:
/api/tags answers from dx, and a 404 for an unknown model shows that auth passed)."""

from __future__ import annotations

import http.client
import re
from pathlib import Path

import pytest
from support.serve_harness import DXServer, start_dx

pytestmark = pytest.mark.integration


@pytest.fixture
def dx(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = start_dx(tmp_path)
    yield server
    server.stop()


def _login_url(dx: DXServer) -> str:
    found = [m.group(1) for line in dx.lines if (m := re.search(r"(http://\S+/\?token=(\S+))", line))]
    assert found, dx.lines
    return found[0]


def _req(dx: DXServer, method: str, path: str, headers: dict[str, str] | None = None,
         body: bytes | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", dx.port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def _cookie(resp: http.client.HTTPResponse) -> str:
    set_cookie = resp.getheader("Set-Cookie") or ""
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Path=/" in set_cookie, set_cookie
    return set_cookie.split(";", 1)[0]


def test_login_url_sets_a_cookie_and_redirects(dx: DXServer) -> None:
    url = _login_url(dx)
    assert url.startswith(dx.url) and dx.api_key not in url  # the long-lived key stays out of browser history
    path = url[len(dx.url):]
    first = _req(dx, "GET", path, {"Accept": "text/html"})
    assert first.status in (302, 303) and first.getheader("Location") == "/", first.status
    cookie = _cookie(first)
    assert _req(dx, "GET", "/api/tags", {"Cookie": cookie}).status == 200
    assert _req(dx, "GET", "/api/tags").status == 401
    assert _req(dx, "GET", "/api/tags", {"Cookie": cookie.split("=")[0] + "=forged"}).status == 401
    # spent: the same link again logs nobody in
    again = _req(dx, "GET", path, {"Accept": "text/html"})
    assert again.status == 401 and again.getheader("Set-Cookie") is None
    # the API key works as a token too (a second browser)
    assert _req(dx, "GET", f"/?token={dx.api_key}").status in (302, 303)


def test_cookie_writes_need_their_own_origin(dx: DXServer) -> None:
    cookie = _cookie(_req(dx, "GET", f"/?token={dx.api_key}"))
    body = b'{"model":"no-such-model"}'
    own = f"http://127.0.0.1:{dx.port}"
    json_h = {"Cookie": cookie, "Content-Type": "application/json"}
    # from the page's own origin: auth passes (404: no such model)
    assert _req(dx, "POST", "/api/delete", {**json_h, "Origin": own}, body).status == 404
    # no Origin on a write: the cookie does not count
    assert _req(dx, "POST", "/api/delete", json_h, body).status == 401
    # another site: refused before auth
    assert _req(dx, "POST", "/api/delete", {**json_h, "Origin": "http://evil.example"}, body).status == 403
    # a sibling port's page is same-site, not same-origin
    assert _req(dx, "POST", "/api/delete", {**json_h, "Origin": "http://127.0.0.1:1",
                                            "Sec-Fetch-Site": "same-site"}, body).status == 403
    # a rebound DNS name never gets as far as the cookie
    assert _req(dx, "GET", "/api/tags", {"Cookie": cookie, "Host": f"attacker.example:{dx.port}"}).status == 403
    # the bearer key still works everywhere, without any Origin
    assert _req(dx, "POST", "/api/delete", {"Authorization": f"Bearer {dx.api_key}",
                                            "Content-Type": "application/json"}, body).status == 404


def test_wrong_token_is_401_and_sets_nothing(dx: DXServer) -> None:
    resp = _req(dx, "GET", "/?token=not-the-token", {"Accept": "text/html"})
    assert resp.status == 401 and resp.getheader("Set-Cookie") is None
