"""The engines: ``llama-server`` children started, supervised and leased per request.

``launcher`` (pdeathsig, watchdog), ``process`` (one engine), ``manager`` (many, with keep-alive
and slots), ``keep_alive`` (Ollama's parser), ``locate`` (which binary), ``speculative`` (draft
models), ``relay`` (bytes to and from an engine), ``lease`` (a model name to a leased engine).
May import models, registry, host and the bottom modules.
"""
