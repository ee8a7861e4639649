"""The console scripts of this checkout's install, found beside the running Python.

``pip install -e '.[test]'`` puts ``dx`` and ``dxbuild`` in the same ``bin/`` as the interpreter
running the suite; PATH may not have that folder (a venv used without ``activate``). A script
missing there is a broken install, so it fails the test that needs it rather than skipping it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def console_script(name: str) -> str:
    """The path of console script ``name`` installed with this Python; AssertionError if it is not there."""
    path = Path(sys.executable).parent / name
    assert path.is_file() and os.access(path, os.X_OK), \
        f"{path} is missing: the console script {name!r} comes with `pip install -e '.[test]'` (./test.sh)"
    return str(path)
