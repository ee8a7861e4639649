"""dxverify: the one gate every model and artifact passes through.

A strict, bounds-checked GGUF reader, streamed hashing, signatures and the
embedded-model trailer. Shared by the builder (dxbuild) and the runtime (dx).
"""
