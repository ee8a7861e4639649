"""The distribution tests' fixtures; they and the helpers live in ``dist_harness`` (a name of its own:
``from conftest import`` finds whichever folder's conftest was imported last)."""

from support.dist_harness import machine, release_keys, serve, signed_release  # noqa: F401 - fixtures for tests/dist
