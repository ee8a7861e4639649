"""``dxbuild --modelfile FILE``: a Modelfile minted into one executable, read and checked before any work.

The Modelfile is parsed by the runtime's own parser (``dx.models.modelfile``: what
Ollama's accepts; every error names the line and the instruction) in the mint's
first second, and turned into the mint's ordinary options: ``FROM`` is ``--model``
(a recipe name, a GGUF path, ``hf:…``, an Ollama registry ``NAME:TAG``, or a model
of DX's store: a name or ``sha256:DIGEST``), ``ADAPTER`` is ``--adapter`` and
``DRAFT`` is ``--draft``, so each is resolved and checked exactly as those flags are
(``dxverify.adapter``, ``dxverify.spec_pair``). Paths are relative to the
Modelfile's folder, as for ``dx create``.

What the rest of the Modelfile says (SYSTEM, MESSAGEs, PARAMETERs, LICENSE,
TEMPLATE, REQUIRES) travels in the trailer's metadata under ``"modelfile"`` in the
record shape of a created model (``dx.models.create``): the runtime reads one
shape for a model made by ``dx create`` and for one minted from a Modelfile. The
embed step fills in the record's digests (``base``, ``adapters``, ``draft``) from
the entries it has just hashed, and its ``text``.

The executable serves the model under the Modelfile's name: ``--name NAME``, else
the Modelfile's file name when it is ``NAME.Modelfile`` / ``NAME.modelfile`` /
``Modelfile.NAME`` or any other file name than ``Modelfile`` (its stem), else the
FROM model's own name. The name also names the file (``dx-NAME-cpu-linux-x86_64``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

from dxbuild.context import MintModelfile, MintOptions
from dxverify.errors import ConfigurationError

#: A Modelfile is text: refuse anything larger before reading it (Ollama's are a few KB).
MAX_BYTES = 1 << 20


def _fail(path: Path, message: str, hint: str | None = None) -> ConfigurationError:
    return ConfigurationError(f"{path}: {message}", hint=hint)


def default_name(path: Path) -> str | None:
    """The served name a Modelfile's file name gives: ``persona.Modelfile``/``Modelfile.persona``/
    ``persona.txt`` → ``persona``; a file called ``Modelfile`` gives none (the FROM model's name is used)."""
    base = path.name
    low = base.lower()
    if low == "modelfile":
        return None
    if low.endswith(".modelfile"):
        stem = base[: -len(".modelfile")]
    elif low.startswith("modelfile."):
        stem = base[len("modelfile."):]
    else:
        stem = path.stem
    keep = "".join(c if (c.isalnum() or c in "._-") else "-" for c in stem).strip(".-").lower()
    return keep or None


def _checked_name(name: str, what: str) -> str:
    from dx.names import parse_name
    from dxverify.errors import DXError

    try:
        parse_name(name)
    except DXError as e:
        raise ConfigurationError(f"{what} {name!r} is not a model name: {e.message}",
                                 hint="use letters, digits, '.', '-' and '_' (e.g. --name pirate)") from None
    return name


def _is_path(value: str) -> bool:
    from dx.names import looks_like_path

    return looks_like_path(value) or os.sep in value


def _spec(value: str, folder: Path, what: str, path: Path) -> tuple[str, str | None]:
    """A FROM/ADAPTER/DRAFT value as a ``--model`` spec: (spec, its pinned SHA-256 when the store gave it).

    A path is relative to the Modelfile's folder; ``sha256:DIGEST`` and a name of DX's own
    store are the store's blob (pinned by its digest); anything else is for ``--model``'s resolver.
    """
    if value.startswith("hf:"):
        return value, None
    if value.startswith(("sha256:", "sha256-")):
        blob = _store_blob(value)
        if blob is None:
            raise _fail(path, f"{what} {value}: no such blob in DX's store",
                        hint="`dx list` shows the store's models; or name a GGUF path, a recipe or hf:OWNER/REPO/FILE.gguf")
        return str(blob), value[7:].lower()
    p = Path(value).expanduser()
    p = p if p.is_absolute() else folder / p
    if p.is_file():
        return str(p), None
    if _is_path(value):
        raise _fail(path, f"{what} {value}: no such file (a path is relative to the Modelfile's folder)")
    own = _store_entry(value)
    if own is not None:
        return own
    return value, None


def _store_blob(digest: str) -> Path | None:
    from dx.config import dx_home
    from dx.models.store import ModelStore
    from dxverify.errors import DXError

    try:
        return ModelStore(dx_home(), ollama_dir=False).blob_path(digest)
    except (DXError, ValueError, OSError):
        return None


def _store_entry(name: str) -> tuple[str, str] | None:
    """A model of DX's own store by name (pulled or created): (its GGUF's path, its SHA-256), else None."""
    from dx.config import dx_home
    from dx.models.store import ModelStore
    from dxverify.errors import DXError

    try:
        entry = ModelStore(dx_home(), ollama_dir=False).own(name)
    except (DXError, ValueError, OSError):
        return None
    if entry is None or entry.in_place or not Path(entry.path).is_file():
        return None
    return str(entry.path), entry.sha256


def load(options: MintOptions) -> tuple[MintOptions, MintModelfile | None]:
    """``options`` with FROM/ADAPTER/DRAFT as --model/--adapter/--draft, and the Modelfile; unchanged without one.

    Raises a one-line ConfigurationError (the Modelfile's path, its line, the instruction)
    for a Modelfile Ollama's rules refuse, a flag that says the same thing twice, or what a
    minted file cannot carry (a second ADAPTER) — before anything is downloaded or built.
    """
    path = getattr(options, "modelfile", None)
    name = getattr(options, "name", None)
    if path is None:
        if name:
            raise ConfigurationError("--name names a Modelfile's model: it needs --modelfile",
                                     hint="add --modelfile FILE, or leave out --name (the file is named by --model)")
        return options, None
    path = Path(path).expanduser()
    if options.model:
        raise ConfigurationError("--modelfile names its model with FROM: leave out --model",
                                 hint="or leave out --modelfile and mint --model alone")
    if not path.is_file():
        raise ConfigurationError(f"--modelfile {path}: no such file", hint="write one (FROM MODEL, SYSTEM …)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _fail(path, f"cannot read the Modelfile: {e.strerror or e}") from None
    if len(data) > MAX_BYTES:
        raise _fail(path, f"the Modelfile is {len(data)} bytes; a Modelfile is text of at most {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(path, f"the Modelfile is not UTF-8 text (byte {e.start})") from None
    from dx.models.modelfile import ModelfileError, parse

    try:
        mf = parse(text)
    except ModelfileError as e:
        raise _fail(path, e.message, e.hint) from None
    folder = path.resolve().parent
    if len(mf.adapters) > 1:
        raise _fail(path, f"Modelfile line {mf.adapter_lines[1]}: ADAPTER: a second ADAPTER; a minted executable "
                          "carries one LoRA adapter", hint="keep one ADAPTER line (merge the adapters first)")
    if mf.adapters and options.adapter:
        raise ConfigurationError(f"--adapter and the Modelfile's ADAPTER (line {mf.adapter_lines[0]}) both name "
                                 "an adapter", hint="keep one: leave out --adapter, or the ADAPTER line")
    if mf.draft and options.draft:
        raise ConfigurationError("--draft and the Modelfile's DRAFT both name a draft model",
                                 hint="keep one: leave out --draft, or the DRAFT line")
    model, pin = _spec(mf.from_, folder, "FROM", path)
    sha256 = options.sha256
    if pin and sha256 and sha256.lower() != pin:
        raise _fail(path, f"FROM {mf.from_} has SHA-256 {pin}, --sha256 says {sha256}")
    changes: dict[str, Any] = {"model": model, "sha256": sha256 or pin}
    if mf.adapters:
        changes["adapter"] = _spec(mf.adapters[0], folder, f"Modelfile line {mf.adapter_lines[0]}: ADAPTER", path)[0]
    if mf.draft:
        changes["draft"] = _spec(mf.draft, folder, "DRAFT", path)[0]
    served = _checked_name(name, "--name") if name else default_name(path)
    if served is not None and not name:
        served = _checked_name(served, f"the Modelfile's file name gives the model name {served!r}; that name")
    record: dict[str, Any] = {
        "from": _shown_from(mf.from_),
        "base": None,
        "system": mf.system,
        "template": mf.template,
        "license": list(mf.license),
        "messages": [dict(m) for m in mf.messages],
        "params": dict(mf.parameters),
        "adapters": [],
        "draft": None,
        "requires": mf.requires,
    }
    found = MintModelfile(path=path.resolve(), sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                          name=served, record=record)
    return dataclasses.replace(options, **changes), found


def _shown_from(value: str) -> str:
    """FROM as the executable shows it: a path is reduced to its file name (no builder path travels)."""
    return Path(value).name if _is_path(value) else value


def finish_record(record: dict[str, Any], model_sha256: str, adapter_sha256: str | None,
                  draft_sha256: str | None) -> dict[str, Any]:
    """The record with the entries' digests and its rendered ``text`` (``dx show --modelfile``)."""
    from dx.models.create import render_record

    done = {**record, "base": f"sha256:{model_sha256}",
            "adapters": [f"sha256:{adapter_sha256}"] if adapter_sha256 else [],
            "draft": f"sha256:{draft_sha256}" if draft_sha256 else None}
    done["text"] = render_record(done)
    return done
