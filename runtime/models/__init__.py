"""The models: what can be served and where its bytes are.

``catalog`` (THE one place that decides what can be served and how a missing model is fetched),
``store`` (DX's on-disk store, never downloads), ``pull``, ``source`` (``ModelSource`` and the check
before any engine loads it), ``check``, ``details`` (Ollama's details), ``defaults``, ``embedded``,
``entry``, ``ollama_dir`` (Ollama's own store, read-only). May import registry, host and the bottom.
"""
