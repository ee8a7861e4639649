"""The server's API key and the bind policy that goes with it.

The key lives in ``$DX_HOME/api_key`` (``~/.dx/api_key`` by default, the same
directory as the model store), created at first start with mode 0600. Clients
send it as ``Authorization: Bearer <key>`` (the openai and ollama clients),
``X-Api-Key: <key>`` (the anthropic SDK) or HTTP Basic with the key as the
password (``http://user:KEY@host`` URLs) — all equal (``key_matches``). Auth may be turned off only on a loopback bind: a public address without
a key would hand the machine's compute to anyone on the network.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import ipaddress
import os
import secrets
import socket
from pathlib import Path
from typing import Any, Protocol

from dx.config import dx_home
from dxverify.errors import ConfigurationError

KEY_FILE = "api_key"
_KEY_PREFIX = "dx-"


def api_key_path() -> Path:
    return dx_home() / KEY_FILE


def load_or_create_api_key(path: Path | None = None) -> str:
    """Read the key, creating it (0600, written whole then renamed) on first use."""
    path = path or api_key_path()
    try:
        key = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        key = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the API key file {path}: {exc}", hint="delete it to get a new key") from None
    if key:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, 0o600)  # someone widened it; the key is a secret
        return key
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = _KEY_PREFIX + secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(key + "\n")
        try:
            os.link(tmp, path)  # first writer wins if two servers start at once
        except FileExistsError:
            return load_or_create_api_key(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return key


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_bind_policy(host: str, auth_enabled: bool) -> None:
    """Refuse to serve a non-loopback address without a key."""
    if not auth_enabled and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve {host} without an API key: anyone who can reach this address could use it",
            hint="drop --no-auth (clients then send `Authorization: Bearer <key>`), or bind 127.0.0.1",
        )


#: how a client may send the key, for the 401's message and the server's banner
KEY_FORMS = "`Authorization: Bearer <key>`, `X-Api-Key: <key>` or HTTP Basic with the key as the password"


class HeaderFields(Protocol):
    """What ``key_matches`` reads of a request's headers (``dx.server.wire.Headers``: case-insensitive)."""

    def get(self, name: str, default: Any = None) -> Any: ...


def key_matches(headers: HeaderFields, key: str) -> bool:
    """Does the request carry ``key`` in any form a client sends it? Each candidate is compared in constant time.

    ``Authorization: Bearer <key>`` (openai, ollama clients), ``X-Api-Key: <key>`` (the anthropic SDK,
    llama.cpp's own clients), ``Authorization: Basic base64(<any user>:<key>)`` (a URL written
    ``http://user:KEY@host``, as LangChain sends it). A malformed header is simply not the key.
    """
    want = key.encode()
    found = False
    for token in (_from_authorization(headers.get("Authorization")), _strip(headers.get("X-Api-Key"))):
        if token is not None:
            found |= hmac.compare_digest(token, want)  # no early exit: the time does not say which matched
    return found


def _strip(value: str | None) -> bytes | None:
    return value.strip().encode("latin-1", "replace") if value else None


def _from_authorization(header: str | None) -> bytes | None:
    """The key an ``Authorization`` header carries (Bearer token, or Basic's password), else None."""
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return _strip(credentials)
    if scheme != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    _user, colon, password = decoded.partition(b":")
    return password if colon else None
