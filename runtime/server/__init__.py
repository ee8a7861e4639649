"""The HTTP server: the composition root (``app``), the transport and its parts, the route table,
the Ollama and OpenAI handlers, auth and the browser login.

May import every layer below it (swarm, engine, models, registry, host, the bottom modules);
nothing below imports it. Keep this file empty of imports: ``dx serve`` loads only what it uses.
"""
