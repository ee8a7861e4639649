"""The error hierarchy every DX command shares.

A DXError is what a user sees: one line saying what is wrong, where, and what
to do. The CLIs print it without a traceback (unless --debug) and exit with its
code. Anything that is not a DXError is a bug in DX.
"""

from __future__ import annotations


class DXError(Exception):
    """A failure the user can act on. ``str(err)`` is the one line we print."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} — {self.hint}"
        return self.message


class ConfigurationError(DXError):
    """A recipe, matrix, flag or environment setting is wrong."""

    exit_code = 2


class MalformedInputError(DXError):
    """A file is not what it claims to be (bad GGUF, truncated executable...)."""

    exit_code = 3


class IntegrityError(DXError):
    """A checksum or signature does not match."""

    exit_code = 4


class UnsupportedError(DXError):
    """This host cannot do what was asked (tier not buildable here, OS...)."""

    exit_code = 5


class ToolError(DXError):
    """An external tool (cmake, nuitka, compiler) failed; carries the log path."""

    exit_code = 6


class EnvironmentProblem(DXError):
    """This machine lacks something DX needs: a package, a tool, the network, disk space, a permission.

    Not a bug in DX and not a bad input: the one line says what is missing and the
    command (or setting) that provides it.
    """

    exit_code = 7


class IncompatibleModelsError(ConfigurationError):
    """A draft model cannot speculate for its target: their vocabularies differ.

    A ConfigurationError (exit 2), not a MalformedInputError: each GGUF is a valid
    file on its own; what is wrong is the pairing the user asked for (a flag or a
    recipe's ``--draft``), and the fix is to choose another draft, not to re-download.
    """
