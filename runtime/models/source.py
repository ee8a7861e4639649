"""Where a model's bytes are (``ModelSource``) and the check every model passes before an engine loads it.

Six layers name a model this way (catalog, store, embedded, speculative, the
engine, the API handlers), so it sits in the models layer, apart from the engine
that consumes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dx.config import dx_home
from dx.errors import ModelNotFoundError  # a 404 on the wire: the model is gone, not the server broken
from dx.models.check import verify_model

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class ModelSource:
    """Where a GGUF's bytes are: a whole file, or ``length`` bytes at ``offset`` of a
    larger file (a model embedded in a minted executable)."""

    path: Path
    offset: int = 0
    length: int | None = None
    name: str = ""
    sha256: str | None = None

    @property
    def engine_model_arg(self) -> str:
        """What llama-server's ``-m`` gets; ``FILE#offset=N`` is DX's engine patch."""
        if self.offset:
            return f"{self.path}#offset={self.offset}"
        return str(self.path)

    @property
    def display_name(self) -> str:
        return self.name or Path(self.path).name

    @property
    def key(self) -> tuple[str, int]:
        return (str(Path(self.path).resolve()), self.offset)

    def size(self) -> int:
        if self.length is not None:
            return self.length
        return Path(self.path).stat().st_size - self.offset


def verify_source(source: ModelSource) -> str:
    """Refuse a model whose structure or hash is wrong, before any engine sees it.

    Structure is checked at every start (milliseconds); the full SHA-256 once,
    cached (``dx.models.check`` over ``dxverify.verified_cache``). Raises the
    verifier's own DXError, whose message is the reason; returns the SHA-256.
    """
    path = Path(source.path)
    if not path.is_file():
        raise ModelNotFoundError(f"model file not found: {path}", hint="check the path or `dx list`")
    return verify_model(
        path, offset=source.offset, length=source.length, expected_sha256=source.sha256,
        cache_dir=dx_home() / "cache",
    )
