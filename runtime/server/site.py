"""Which sites may talk to this server: the ``Host`` policy (DNS rebinding) and the ``Origin`` policy (CORS).

``Host`` must name this server (else 403); a cross-site ``Origin`` must be listed
in ``--allow-origins`` (else 403). Pure policy objects, checked by the request
before auth.
"""


from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Iterable

from dxverify.errors import ConfigurationError


def split_host(value: str) -> tuple[str, str] | None:
    """``Host`` (or an origin's netloc) -> (lower-case name without brackets or final dot, port or "").

    None when it is not a host[:port] at all.
    """
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\s\[\]:/@?#]+)(?::(\d{1,5}))?", value)
    if m is None:
        return None
    name = m.group(1).lower()
    if name.startswith("["):
        name = name[1:-1]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return None
    return name.rstrip(".") if name != "." else "", m.group(2) or ""


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class HostPolicy:
    """Which ``Host`` names this server answers (DNS rebinding protection).

    A page on ``http://attacker.example`` can make a browser connect to
    127.0.0.1 by re-pointing its own DNS name, but the browser still sends
    ``Host: attacker.example``: refusing names that are not ours stops it. An IP
    literal cannot be re-pointed, and neither can a loopback name. Allowed:

    * loopback: ``localhost``, ``*.localhost``, 127.0.0.0/8, ``::1``;
    * the address or name given to ``--host``;
    * bound to every interface (0.0.0.0, ::): any IP literal and this machine's
      host name (what clients on the network can type);
    * ``--allowed-hosts`` entries: exact names, ``*.example.com`` for its
      subdomains, ``*`` to turn the check off (a reverse proxy that checks it).

    The port is not compared: the name is what a rebinding attack forges, and
    behind a port forward the port a client used may differ from ours. A refusal
    is 403, as Ollama answers since its fix, not 421 (which invites a retry on
    another connection, and no connection to this server will do).
    """

    def __init__(self, bind_host: str, allowed: Iterable[str] = ()) -> None:
        self.any = False
        self.names = {"localhost"}
        self.suffixes = [".localhost"]
        for entry in allowed:
            entry = entry.strip().lower()
            if entry == "*":
                self.any = True
                continue
            wildcard = entry.startswith("*.")
            parsed = split_host(entry[2:] if wildcard else entry)
            if not entry or parsed is None or parsed[1]:
                raise ConfigurationError(
                    f"--allowed-hosts: {entry!r} is not a host name",
                    hint="give names without scheme or port, e.g. --allowed-hosts myhost.lan,*.example.com",
                )
            if wildcard:
                self.suffixes.append("." + parsed[0])
            else:
                self.names.add(parsed[0])
        bind = bind_host.strip("[]").lower()
        self.wildcard = bind in ("", "0.0.0.0", "::")
        if self.wildcard:
            hostname = socket.gethostname().lower().rstrip(".")
            self.names |= {hostname, hostname.split(".", 1)[0]}
        else:
            self.names.add(bind.rstrip("."))
        self.suffixes_t = tuple(self.suffixes)

    def allows(self, name: str) -> bool:
        if self.any or name in self.names or name.endswith(self.suffixes_t):
            return True
        ip = _ip(name)
        return ip is not None and (ip.is_loopback or self.wildcard)


def _origin_key(origin: str) -> tuple[str, str, str] | None:
    """An origin (``scheme://host[:port]``) -> (scheme, host, port or "" when default), or None."""
    parts = urllib.parse.urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    hp = split_host(parts.netloc)
    if hp is None or not hp[0]:
        return None
    port = "" if hp[1] == {"http": "80", "https": "443"}[parts.scheme] else hp[1]
    return parts.scheme, hp[0], port


class OriginPolicy:
    """Which cross-site ``Origin``s may call the API (``--allow-origins``); CORS answers for them.

    Same-origin requests (the origin's host:port is the request's Host: llama.cpp's
    web UI served by dx itself) need no listing. Anything else is refused: a
    page on another site must not be able to use, or read from, a local server.
    """

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        keys = set()
        for entry in allowed:
            if not entry.strip():
                continue
            key = _origin_key(entry)
            if key is None:
                raise ConfigurationError(
                    f"--allow-origins: {entry!r} is not an origin",
                    hint="list each origin in full, e.g. --allow-origins http://localhost:3000 ('*' is not accepted)",
                )
            keys.add(key)
        self.allowed = frozenset(keys)

    def listed(self, origin: str) -> bool:
        return _origin_key(origin) in self.allowed


def same_origin(origin: str, host: str) -> bool:
    key, hp = _origin_key(origin), split_host(host)
    if key is None or hp is None:
        return False
    default = {"http": "80", "https": "443"}[key[0]]
    return (key[1], key[2]) == (hp[0], "" if hp[1] == default else hp[1])
