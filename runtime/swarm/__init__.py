"""DX Swarm: one model across several machines (llama.cpp's RPC backend behind DX's mutual-TLS tunnel).

``head`` (the secret, workers, the head, layer placement) and ``tunnel`` (the byte pump).
May import the engine and everything below it. Loaded only for a swarm head or ``dx worker``
(it pulls in ssl), never by a plain ``dx serve``.
"""
