"""Render ``install.sh`` with one release's URL and Ed25519 public key baked in.

The script itself (``ci/install.sh.j2``) is POSIX sh because it runs before
anything else is installed; this module only validates the two values and
fills them in, so a bad URL or key is caught when the release is made, not on
a user's machine.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from dxbuild import __version__
from dxbuild.templates import render
from dxverify.errors import ConfigurationError

TEMPLATE = "install.sh.j2"


def check_base_url(url: str) -> str:
    """The release URL without a trailing slash; https, or plain http to loopback only."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise ConfigurationError(f"--base-url {url!r} is not a URL",
                                 hint="give the release's download URL, e.g. https://github.com/OWNER/REPO/releases/download/v1.0.0")
    if parts.query or parts.fragment or any(c in url for c in "'\"`$\\ \t\n"):
        raise ConfigurationError(f"--base-url {url!r} has a query, fragment, quote or space",
                                 hint="give the plain folder URL the release files live under")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http":
        host = parts.hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return url
    raise ConfigurationError(f"--base-url {url!r} must use https://",
                             hint="plain http is accepted only for 127.0.0.1, ::1 or localhost (tests)")


def load_public_key_pem(path: Path) -> str:
    """The PEM text of an Ed25519 public key (SubjectPublicKeyInfo), checked."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigurationError(f"--public-key {path}: cannot read it ({e.strerror})",
                                 hint="pass the dx-release.pub written by `dxbuild keygen`") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigurationError(f"--public-key {path}: not a PEM public key",
                                 hint="pass the dx-release.pub written by `dxbuild keygen`, not the private key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(f"--public-key {path}: a {type(key).__name__}, not an Ed25519 key",
                                 hint="DX releases are signed with Ed25519 (`dxbuild keygen`)")
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii").strip()


def render_install_script(base_url: str, public_key_pem: str | None, dx_version: str = __version__) -> str:
    """The text of install.sh for one release. ``public_key_pem=None`` renders a script
    that says, when run, that it cannot check signatures."""
    return render(TEMPLATE, base_url=check_base_url(base_url), public_key=public_key_pem or "",
                  dx_version=dx_version)
