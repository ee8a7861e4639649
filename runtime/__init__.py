"""dx: the runtime inside every minted executable.

Keep this module import-light: it runs at every start of a minted binary.
"""

__version__ = "0.1.0"
