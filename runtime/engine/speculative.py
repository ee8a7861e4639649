"""Speculative decoding, configured by DX: ``--draft``/``--spec`` -> the pinned engine's flags.

llama.cpp renamed its speculation flags several times, and on the pinned commit
``-md FILE`` alone loads the draft and never drafts: ``--spec-type`` defaults to
``none``. So DX always names the type, with the flags read from the pinned
``common/arg.cpp`` and ``common/speculative.cpp``:

* draft model: ``--spec-type draft-simple --spec-draft-model FILE`` (``FILE#offset=N``
  for a draft inside a minted executable: the engine loads it with
  ``llama_model_load_from_file``, which DX's patch 0001 teaches that form), limits
  ``--spec-draft-n-max``/``--spec-draft-n-min``;
* n-gram (no second model): ``--spec-type ngram-mod``, limits
  ``--spec-ngram-mod-n-max``/``--spec-ngram-mod-n-min``.

Naming the type also keeps the engine from guessing one from the draft's GGUF
(``common_speculative_types_from_gguf`` opens the path as a plain file, which
``FILE#offset=N`` is not). Planning is pure (:func:`plan`, :meth:`Speculation.engine_args`);
:func:`check` verifies the draft like a target and the pair with ``dxverify.spec_pair``
before any engine starts. Only click is imported at module level.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dxverify.errors import ConfigurationError

if TYPE_CHECKING:
    from dx.models.source import ModelSource

#: ``auto`` (the default with a draft): speculate only where it measures faster (dx.engine.spec_auto);
#: ``on`` forces the draft (or n-grams without one), ``off``/``none`` turn it off, ``draft``/``ngram`` force that kind
MODES = ("auto", "on", "off", "none", "draft", "ngram")
#: DX's mode -> (the engine's --spec-type, its n-max flag, its n-min flag), from the pinned common/arg.cpp
ENGINE_FLAGS = {
    "draft": ("draft-simple", "--spec-draft-n-max", "--spec-draft-n-min"),
    "ngram": ("ngram-mod", "--spec-ngram-mod-n-max", "--spec-ngram-mod-n-min"),
}


@dataclass(frozen=True)
class Speculation:
    """What one target's engine speculates with: nothing, a draft model, or n-grams of its own text."""

    mode: str = "none"
    draft: ModelSource | None = None
    n_max: int | None = None
    n_min: int | None = None
    auto: bool = False  # measured at load (and re-checked) against no speculation; kept only where it wins
    #: a created model's own DRAFT (Modelfile) is used for that model: by default (auto) and with ``on``;
    #: not with off/none, nor where a kind was forced (draft, ngram)
    model_drafts: bool = False

    def engine_args(self) -> list[str]:
        """The llama-server arguments for this plan (none for ``none``)."""
        if self.mode == "none":
            return []
        spec_type, max_flag, min_flag = ENGINE_FLAGS[self.mode]
        args = ["--spec-type", spec_type]
        if self.draft is not None:
            args += ["--spec-draft-model", self.draft.engine_model_arg]
        if self.n_max is not None:
            args += [max_flag, str(self.n_max)]
        if self.n_min is not None:
            args += [min_flag, str(self.n_min)]
        return args

    def describe(self) -> str:
        """One line for the console: what speculates."""
        if self.mode == "draft" and self.draft is not None:
            if self.auto:
                return (f"speculative decoding with draft {self.draft.display_name} where it measures faster "
                        "(--spec auto: timed with and without it at load; --spec on forces it)")
            return f"speculative decoding with draft {self.draft.display_name}"
        if self.mode == "ngram":
            return "speculative decoding from n-grams of the text (no draft model)"
        return "no speculative decoding"


def plan(
    mode: str | None, draft: ModelSource | None, *, embedded_draft: ModelSource | None = None,
    n_max: int | None = None, n_min: int | None = None,
) -> Speculation:
    """Decide the speculation from the options: pure, so every combination is unit-tested.

    ``mode`` None means the default, ``auto``: the draft given or the one a minted executable's
    model carries (``embedded_draft``), used only where it measures faster; without a draft,
    no speculation (n-grams only when forced with ``ngram``). ``on`` forces the draft, or
    n-grams when there is none; ``off`` is ``none``.
    """
    if mode is not None and mode not in MODES:
        raise ConfigurationError(f"--spec {mode!r} is not one of {', '.join(MODES)}")
    if n_max is not None and n_min is not None and n_min > n_max:
        raise ConfigurationError(f"--draft-min {n_min} is larger than --draft-max {n_max}",
                                 hint="the engine drafts between --draft-min and --draft-max tokens")
    auto = mode in (None, "auto")
    model_drafts = auto or mode == "on"
    if auto:
        mode = "draft" if draft is not None or embedded_draft is not None else "none"
    elif mode == "on":
        mode = "draft" if draft is not None or embedded_draft is not None else "ngram"
    elif mode == "off":
        mode = "none"
    if mode == "none":
        if draft is not None:
            raise ConfigurationError("--spec none and --draft contradict each other", hint="drop one of them")
        return Speculation(auto=auto, model_drafts=model_drafts)
    if mode == "ngram":
        if draft is not None:
            raise ConfigurationError("--spec ngram drafts from the text itself and takes no --draft",
                                     hint="drop --draft, or use --spec draft")
        return Speculation("ngram", None, n_max, n_min, model_drafts=model_drafts)
    chosen = draft or embedded_draft
    if chosen is None:
        raise ConfigurationError("--spec draft needs a draft model",
                                 hint="give --draft DRAFT: a store name, a GGUF path or hf:OWNER/REPO/FILE.gguf")
    return Speculation("draft", chosen, n_max, n_min, auto=auto, model_drafts=model_drafts)


def embedded_draft_for(target: ModelSource | None) -> ModelSource | None:
    """The draft this executable carries, when ``target`` is the model it carries too."""
    from dx.models.embedded import embedded_draft, self_executable

    exe = self_executable()
    if target is None or exe is None or Path(target.path).resolve() != exe:
        return None
    return embedded_draft(exe)  # verified (with the model: one artifact), None for a one-model file


def resolve_draft(spec: str, embedded_draft: ModelSource | None = None) -> ModelSource:
    """DRAFT names a model as MODEL does (store name, path, ``hf:``, this executable's model), or its draft."""
    if embedded_draft is not None:
        from dx.names import default_aliases

        if spec in default_aliases(embedded_draft.display_name):
            return embedded_draft
    from dx.models.embedded import resolve

    return resolve(spec)  # verified (structure, SHA-256 once) like any model


def check(target: ModelSource, spec: Speculation) -> None:
    """Refuse a draft that is damaged or cannot speculate for ``target``, before any engine starts.

    The draft is verified like the target (structure every time, SHA-256 once,
    cached); then ``dxverify.spec_pair`` checks what llama.cpp's
    ``common_speculative_are_compatible`` would, and raises its one line.
    """
    draft = spec.draft
    if draft is None:
        return
    from dx.models.source import verify_source
    from dxverify.spec_pair import check_pair

    verify_source(draft)
    check_pair(target.path, draft.path, target_offset=target.offset, target_length=target.length,
               draft_offset=draft.offset, draft_length=draft.length)


def prepare(
    target: ModelSource | None, mode: str | None, draft: str | None, n_max: int | None = None,
    n_min: int | None = None,
) -> Speculation:
    """What ``dx serve``/``dx run`` do with their options: resolve, plan and check, or stop with one line."""
    if target is None:  # the store's models: n-grams suit any of them, a draft pairs with one model
        if draft is not None or mode == "draft":
            raise ConfigurationError("--draft needs a MODEL to speculate for",
                                     hint="name the target: dx serve MODEL --draft DRAFT")
        return plan(mode, None, n_max=n_max, n_min=n_min)
    embedded = embedded_draft_for(target)
    chosen = resolve_draft(draft, embedded) if draft is not None else None
    spec = plan(mode, chosen, embedded_draft=embedded, n_max=n_max, n_min=n_min)
    check(target, spec)
    return spec


def engine_args_for(target: ModelSource | None, spec: Speculation) -> Callable[[ModelSource, str], Sequence[str]]:
    """Per-engine arguments for the EngineManager (and ``dx run``'s engine): ``--draft`` goes to ``target``'s
    generation engine only (verified again at every start); a created model's own DRAFT to that model's
    (``spec.model_drafts``; its blob is verified with the model's other parts); n-grams to every other
    generation engine. Under ``--spec auto`` the manager times whatever this gives before using it."""
    from dx.engine.process import GENERATE
    from dx.models.defaults import for_source
    from dx.models.source import verify_source

    def args(source: ModelSource, purpose: str) -> Sequence[str]:
        if purpose != GENERATE:
            return ()
        if spec.draft is not None and target is not None and source.key == target.key:
            verify_source(spec.draft)
            return spec.engine_args()
        own = for_source(source).draft_args() if spec.model_drafts else []
        if own:
            return own
        return spec.engine_args() if spec.mode == "ngram" else ()

    return args


def options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The speculation options of ``dx serve`` and ``dx run``, defined once."""
    for opt in reversed((
        click.option("--draft", "draft", default=None, metavar="DRAFT",
                     help="Draft model for speculative decoding (a store name, a GGUF path or "
                          "hf:OWNER/REPO/FILE.gguf); it must share the model's vocabulary."),
        click.option("--spec", "spec", default=None, type=click.Choice(MODES),
                     help="Speculative decoding: auto (the draft only where it measures faster: timed with "
                          "and without it at load, re-checked hourly), on (forced: the draft, else n-grams), "
                          "draft, ngram (n-grams of the text, no second model), off or none  [default: auto "
                          "with --draft or an embedded draft, else off]."),
        click.option("--draft-max", "draft_max", default=None, type=click.IntRange(0, 1024),
                     help="Most tokens drafted per step (engine default: 3 with a draft, 64 ngram)."),
        click.option("--draft-min", "draft_min", default=None, type=click.IntRange(0, 1024),
                     help="Fewest tokens a draft may have (engine default: 0 with a draft, 48 ngram)."),
    )):
        func = opt(func)
    return func
