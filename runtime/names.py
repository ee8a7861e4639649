"""Model specs as users type them: store names, GGUF paths and ``hf:`` files.

Kept apart from the store so the server can validate a name from a request
without touching the disk. A name that is not a name is the sender's mistake:
``InvalidModelNameError`` is a ConfigurationError for the CLI (one line, exit 2)
and a ``BadRequest`` for the server (400 in the API's own shape, never a 500).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dx.errors import InvalidModelNameError
from dxverify.errors import ConfigurationError

DEFAULT_TAG = "latest"
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HOST_PORT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}:[0-9]{1,5}")  # a registry host with a port, as Ollama allows
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_HF_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
HF_PREFIX = "hf:"
_SHOWN = 80  # characters of a rejected name quoted back in an error (it may be megabytes long)



def _shown(text: str) -> str:
    return repr(text[:_SHOWN]) + ("…" if len(text) > _SHOWN else "")


@dataclass(frozen=True, order=True)
class ModelName:
    """``name:tag``; the name may have ``/``-separated parts (``hf.co/owner/repo``)."""

    name: str
    tag: str = DEFAULT_TAG

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"


@dataclass(frozen=True)
class HFFile:
    """One file of a Hugging Face repository, as ``hf:OWNER/REPO/FILE.gguf[@REVISION]``."""

    repo_id: str
    filename: str
    revision: str = "main"

    def __str__(self) -> str:
        rev = "" if self.revision == "main" else f"@{self.revision}"
        return f"{HF_PREFIX}{self.repo_id}/{self.filename}{rev}"

    def default_name(self) -> ModelName:
        """Ollama names Hub models ``hf.co/OWNER/REPO:QUANT``; we use the file stem as the tag."""
        stem = self.filename.rsplit("/", 1)[-1]
        if stem.lower().endswith(".gguf"):
            stem = stem[:-5]
        tag = re.sub(r"[^A-Za-z0-9._-]", "-", stem).lstrip(".-") or DEFAULT_TAG
        return ModelName(f"hf.co/{self.repo_id}", tag[:128])


def parse_name(text: str) -> ModelName:
    """Parse ``name[:tag]``; raise InvalidModelNameError naming the bad part."""
    if not isinstance(text, str):
        raise InvalidModelNameError(f"a model name must be a string, not {type(text).__name__}")
    raw = text.strip()
    if not raw:
        raise InvalidModelNameError("empty model name", hint="give a name such as smollm2 or smollm2:latest")
    name, sep, tag = raw.rpartition(":")
    if not sep or "/" in tag:
        name, tag = raw, DEFAULT_TAG
    if not _TAG.fullmatch(tag):
        raise InvalidModelNameError(
            f"invalid model tag {_shown(tag)} in {_shown(text)}",
            hint="tags use letters, digits, '.', '_' and '-' (at most 128)",
        )
    parts = name.split("/")
    host_port = len(parts) >= 3 and _HOST_PORT.fullmatch(parts[0]) is not None  # 127.0.0.1:5000/ns/model
    if len(parts) > 4 or not all(_SEGMENT.fullmatch(p) or (i == 0 and host_port) for i, p in enumerate(parts)):
        raise InvalidModelNameError(
            f"invalid model name {_shown(name)}",
            hint="names are up to 4 '/'-separated parts of letters, digits, '.', '_' and '-'",
        )
    if any(p in (".", "..") or p.startswith(".") for p in parts):
        raise InvalidModelNameError(f"invalid model name {_shown(name)}", hint="a name part may not start with '.'")
    return ModelName(name, tag)


def default_aliases(display_name: str) -> frozenset[str]:
    """Every name a served default model answers to: ``smollm2``, ``smollm2:latest``, a file's stem…

    The one rule for it: the server's resolver (``dx.engine.lease.ModelResolver``)
    and the CLI (``dx run/show/doctor`` in an executable, ``dx.models.embedded``) both ask here.
    """
    stem = display_name[:-5] if display_name.lower().endswith(".gguf") else display_name
    if stem.endswith(f":{DEFAULT_TAG}"):  # a store name: `smollm2` and `smollm2:latest` are one model
        stem = stem[: -len(DEFAULT_TAG) - 1]
    names = {display_name, stem, stem.lower()}
    return frozenset(names | {f"{n}:{DEFAULT_TAG}" for n in names})


def parse_hf(spec: str) -> HFFile:
    """Parse ``hf:OWNER/REPO/PATH/FILE.gguf[@REVISION]``."""
    body = spec[len(HF_PREFIX):] if spec.startswith(HF_PREFIX) else spec
    revision = "main"
    if "@" in body:
        body, revision = body.rsplit("@", 1)
        if not _REVISION.fullmatch(revision) or ".." in revision:
            raise ConfigurationError(f"invalid revision {revision!r} in {spec!r}")
    parts = body.split("/")
    if len(parts) < 3 or not all(_HF_PART.fullmatch(p) for p in parts) or any(p == ".." for p in parts):
        raise ConfigurationError(
            f"invalid Hugging Face model {spec!r}",
            hint="write hf:OWNER/REPO/FILE.gguf (optionally @REVISION)",
        )
    filename = "/".join(parts[2:])
    if not filename.lower().endswith(".gguf"):
        raise ConfigurationError(f"{spec!r} does not name a .gguf file", hint="write hf:OWNER/REPO/FILE.gguf")
    return HFFile(f"{parts[0]}/{parts[1]}", filename, revision)


def is_hf(spec: str) -> bool:
    return spec.startswith(HF_PREFIX)


def looks_like_path(spec: str) -> bool:
    """A spec is a path when it says so: a separator, a leading dot or ~, or a .gguf suffix."""
    return spec.lower().endswith(".gguf") or spec.startswith(("/", "./", "../", "~"))
