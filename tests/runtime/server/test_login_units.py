"""The browser login's pieces: one-time token, session ids, the cookie, and when a cookie may act."""

from __future__ import annotations

import sys

import pytest

from dx.server.login import Sessions, cookie_may_act, cookie_name


def test_one_time_token_is_spent_on_use() -> None:
    s = Sessions("dx-key", 11434)
    t = s.token
    sid = s.redeem(t)
    assert sid and s.valid(sid)
    assert s.token != t                     # a new token for the next login
    assert s.redeem(t) is None              # the old one is spent
    assert s.redeem("dx-key") is not None   # the API key always logs in
    assert s.redeem("wrong") is None and s.redeem("") is None


class _Clock:
    """Stands in for the ``time`` module of the sessions' module: time moves only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_sessions_expire_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(sys.modules[Sessions.__module__], "time", clock)
    s = Sessions("k", 1, ttl=60, cap=3)
    sid = s.redeem("k")
    clock.now += 59
    assert s.valid(sid)                     # used: extended by another ttl
    clock.now += 59
    assert s.valid(sid)
    clock.now += 61
    assert not s.valid(sid)
    ids = [s.redeem("k") for _ in range(5)]
    assert [s.valid(i) for i in ids] == [False, False, True, True, True]
    assert not s.valid(None) and not s.valid("made-up")


def test_cookie_header_parsing_is_per_port() -> None:
    s = Sessions("k", 8080)
    sid = s.redeem("k")
    header = s.set_cookie(sid)
    assert header.startswith(f"{cookie_name(8080)}={sid};")
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/" in header
    assert s.session_of(f"other=1; {cookie_name(8080)}={sid}") == sid
    assert s.session_of(f"{cookie_name(9090)}={sid}") is None   # another dx server's cookie
    assert s.session_of('bad"cookie; =;;') in (None, "")
    assert s.session_of(None) is None


def test_cookie_may_act_only_from_its_own_origin() -> None:
    assert cookie_may_act("GET", None, None, False)
    assert cookie_may_act("POST", "http://127.0.0.1:8080", "same-origin", True)
    assert not cookie_may_act("POST", None, None, False)                      # no Origin on a write
    assert not cookie_may_act("POST", "http://evil.example", "cross-site", False)
    assert not cookie_may_act("POST", "http://127.0.0.1:8080", "same-site", True)  # a sibling port's page
