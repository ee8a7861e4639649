"""System tools the tests drive (openssl, curl, tmux, npm, chromium, ccache, qemu-user): found, or why not.

``./test.sh`` installs them (as root: CI runs it so) and then sets
``DX_TEST_TOOLS=all``: from there on a missing tool is a broken install and fails the test
that needs it. Where ``./test.sh`` could not install them (not root, no apt-get) it
says so once, and the tests that need a missing tool are skipped, naming it.
"""

from __future__ import annotations

import os
import shutil

import pytest


def need(*names: str, package: str | None = None) -> str:
    """The path of the first of ``names`` on PATH; else a failure (DX_TEST_TOOLS=all) or a skip saying what to install."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    missing(" or ".join(names), package or names[0])
    raise AssertionError("unreachable")  # missing() fails or skips


def missing(what: str, package: str) -> None:
    """Something the test needs from the system is absent: a failure (DX_TEST_TOOLS=all) or a skip saying what to install."""
    if os.environ.get("DX_TEST_TOOLS") == "all":
        pytest.fail(f"{what} is missing though ./test.sh installed the test tools (apt-get install {package})")
    pytest.skip(f"{what} is missing: apt-get install {package} (./test.sh does, as root)")
