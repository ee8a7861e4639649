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
    what = " or ".join(names)
    install = f"apt-get install {package or names[0]}"
    if os.environ.get("DX_TEST_TOOLS") == "all":
        pytest.fail(f"{what} is missing though ./test.sh installed the test tools ({install})")
    pytest.skip(f"{what} is not installed: {install} (./test.sh does, as root)")
