"""Registry clients, stdlib only (they run inside a minted executable): ``huggingface`` (the Hub)
and ``ollama`` (Ollama's registry). May import host and the bottom modules.
"""
