"""dx: the runtime inside every minted executable.

Keep this module import-light: it runs at every start of a minted binary.

Layers, each importing only those below it (enforced: tests/runtime/test_layers.py,
[tool.importlinter] in pyproject.toml)::

    cli > server > swarm > engine > models > registry > host > names > config | errors | metrics
"""

__version__ = "0.1.0"
