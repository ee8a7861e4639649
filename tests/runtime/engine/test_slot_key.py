"""Which engine serves a model (``dx.engine.manager.slot_key``): pure, no engine started.

Found by the soak run: a model created with ``PARAMETER num_ctx 1024`` from one already running
shared that engine, with its context. Every default that becomes an engine flag is part of the key;
the model's name is not (two names for one blob with the same defaults share one engine).
"""

from __future__ import annotations

from pathlib import Path

from dx.engine.manager import slot_key
from dx.engine.process import DEFAULT_CTX_PER_SLOT, EMBED, GENERATE
from dx.models.defaults import ModelDefaults
from dx.models.source import ModelSource

BLOB = ModelSource(Path("/models/blobs/sha256-aa"), name="soak-a")


def key(params: dict[str, object], *, name: str = "soak-a", server_ctx: int | None = None,
        purpose: str = GENERATE) -> tuple[str | int, ...]:
    source = ModelSource(BLOB.path, name=name)
    return slot_key(source, purpose, ModelDefaults(dict(params)), (), server_ctx)


def test_num_ctx_alone_makes_another_engine() -> None:
    assert key({}) != key({"num_ctx": 1024}, name="soak-b")
    assert key({"num_ctx": 2048}) != key({"num_ctx": 1024})


def test_the_default_context_is_the_same_key_as_no_num_ctx() -> None:
    assert key({}) == key({"num_ctx": DEFAULT_CTX_PER_SLOT}, name="soak-c")


def test_load_time_options_make_another_engine() -> None:
    for load in ({"num_batch": 64}, {"num_thread": 2}, {"num_gpu": 0}, {"use_mmap": False}, {"use_mlock": True},
                 {"numa": True}):
        assert key({}) != key(load), load


def test_two_names_with_the_same_options_share_one_engine() -> None:
    assert key({"num_ctx": 1024, "temperature": 0.6}) == key({"num_ctx": 1024, "temperature": 0.6}, name="other")
    assert key({}) == key({}, name="alias")


def test_the_servers_ctx_overrides_the_models_so_num_ctx_does_not_split() -> None:
    assert key({}, server_ctx=2048) == key({"num_ctx": 1024}, server_ctx=2048)


def test_the_key_starts_with_the_bytes_then_the_purpose() -> None:
    # the manager finds every engine of one model (keep_alive, unload) by ModelSource.key
    k = key({"num_ctx": 1024})
    assert k[:2] == BLOB.key and k[2] == GENERATE
    assert key({}, purpose=EMBED) != key({})


def test_sampling_defaults_are_engine_flags_so_they_split_too() -> None:
    # DX hands a model's sampling defaults to llama-server as its command-line defaults (--temp, -r STOP):
    # an engine started with one model's temperature would answer the other's requests with it.
    assert key({"temperature": 0.6}) != key({})
    assert key({"stop": ["<end>"]}) != key({})
