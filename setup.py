"""Package discovery: every package under each mapped folder is found, none is listed by hand.

The import names are prefixed (``dx``, ``dxbuild``…) while the folders keep the
design card's names; ``[tool.setuptools] package-dir`` in pyproject.toml maps
one to the other, and each folder is walked with ``find_packages`` here.
Everything else about the distribution is in pyproject.toml.
"""

import sys
from pathlib import Path

from setuptools import find_packages, setup

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the build requirements add tomli there
    import tomli as tomllib

FOLDERS = tomllib.loads(Path(__file__).with_name("pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
    "package-dir"]

setup(packages=[f"{name}.{sub}" if sub else name
                for name, folder in FOLDERS.items() for sub in ["", *find_packages(folder)]])
