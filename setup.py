"""Package discovery: every package under each mapped folder is found, none is listed by hand.

The import names are prefixed (``dx``, ``dxbuild``…) while the folders keep the
design card's names, so each folder is mapped to its import name and walked
with ``find_packages``. Everything else about the distribution is in pyproject.toml.
"""

from setuptools import find_packages, setup

FOLDERS = {"dx": "runtime", "dxbuild": "builder", "dxverify": "verify", "dxmatrix": "matrix",
           "dxrecipes": "recipes", "dxci": "ci"}

setup(
    package_dir=FOLDERS,
    packages=[f"{name}.{sub}" if sub else name
              for name, folder in FOLDERS.items() for sub in ["", *find_packages(folder)]],
)
