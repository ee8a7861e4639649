"""Browser login: a one-time token in a URL becomes an HttpOnly, SameSite=Strict session cookie.

A browser cannot send ``Authorization: Bearer`` from a page it was simply
pointed at, so without this the web UI served at ``/`` would get 401 for every
call it makes. ``dx serve`` prints ``http://HOST:PORT/?token=T``; opening it
trades T (once) for a session cookie and redirects to ``/`` — how Jupyter does
it. The API key itself is accepted as a token too (it is the credential anyway),
so a second browser can log in with ``/?token=<key>``.

What keeps the cookie from being ridden by other sites: SameSite=Strict (the
browser does not attach it to requests another site starts), the transport's
Host check (a rebound DNS name never reaches this code), and for any request
that changes state, a same-origin ``Origin`` (or ``Sec-Fetch-Site``) is
required before the cookie counts. Sessions live in memory: a restart logs
browsers out, and at most ``MAX_SESSIONS`` are kept (the oldest go first).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from http.cookies import CookieError, SimpleCookie

#: How long a browser session lasts without being used.
SESSION_TTL = 12 * 3600.0
MAX_SESSIONS = 64
#: Methods that only read: a cookie counts for them without an Origin check.
SAFE_METHODS = frozenset({"GET", "HEAD"})


def cookie_name(port: int) -> str:
    """Cookies are not separated by port: two dx servers on one host must not share one."""
    return f"dx_session_{port}"


class Sessions:
    """The one-time login token and the live sessions it (or the API key) opened."""

    def __init__(self, api_key: str, port: int, ttl: float = SESSION_TTL, cap: int = MAX_SESSIONS) -> None:
        self._key = api_key
        self.port = port
        self._ttl = ttl
        self._cap = cap
        self._lock = threading.Lock()
        self._token = secrets.token_urlsafe(24)
        self._live: OrderedDict[str, float] = OrderedDict()  # session id -> expiry (monotonic)

    @property
    def token(self) -> str:
        """The current one-time token (a new one after each login)."""
        with self._lock:
            return self._token

    def login_url(self, base: str) -> str:
        return f"{base.rstrip('/')}/?token={self.token}"

    def redeem(self, token: str) -> str | None:
        """A new session id for a valid token (the one-time token is then spent), else None."""
        token = token.strip()
        with self._lock:
            one_time = hmac.compare_digest(token.encode(), self._token.encode())
            if not one_time and not hmac.compare_digest(token.encode(), self._key.encode()):
                return None
            if one_time:
                self._token = secrets.token_urlsafe(24)
            sid = secrets.token_urlsafe(32)
            self._live[sid] = time.monotonic() + self._ttl
            while len(self._live) > self._cap:
                self._live.popitem(last=False)
            return sid

    def valid(self, sid: str | None) -> bool:
        """Is ``sid`` a live session? Using it extends it."""
        if not sid:
            return False
        now = time.monotonic()
        with self._lock:
            expiry = self._live.get(sid)
            if expiry is None:
                return False
            if expiry < now:
                del self._live[sid]
                return False
            self._live[sid] = now + self._ttl
            self._live.move_to_end(sid)
            return True

    def session_of(self, cookie_header: str | None) -> str | None:
        """This server's session id from a ``Cookie`` header (malformed cookies count as none)."""
        if not cookie_header:
            return None
        jar = SimpleCookie()
        try:
            jar.load(cookie_header)
        except CookieError:
            return None
        morsel = jar.get(cookie_name(self.port))
        return morsel.value if morsel is not None else None

    def set_cookie(self, sid: str) -> str:
        """The ``Set-Cookie`` value for a new session."""
        return (f"{cookie_name(self.port)}={sid}; HttpOnly; SameSite=Strict; Path=/; "
                f"Max-Age={int(self._ttl)}")


def cookie_may_act(method: str, origin: str | None, fetch_site: str | None, same_origin: bool) -> bool:
    """May a cookie authorise this request? Reads always; anything else only from the page's own origin."""
    if method in SAFE_METHODS:
        return True
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    return origin is not None and same_origin
