"""Helpers shared by the whole suite; ``tests/`` is on ``sys.path`` (pytest's rootdir-relative import of ``tests/conftest.py``)."""
