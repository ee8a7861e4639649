"""dxbuild: recipes + matrix -> engine -> runtime bundle -> minted executable -> release."""

__version__ = "0.1.0"
