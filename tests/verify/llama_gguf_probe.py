"""Ask llama.cpp's own GGUF parser (gguf_init_from_file in libggml-base) about files.

Run as a subprocess: ``python3 llama_gguf_probe.py LIBGGML_BASE < paths``; prints one
line per path, 1 when llama.cpp accepts it, 0 when it rejects it. A separate process,
because a parser bug in C may abort: the caller sees which input did it.
"""

from __future__ import annotations

import ctypes
import sys


class InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


def main() -> None:
    lib = ctypes.CDLL(sys.argv[1])
    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, InitParams]
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    lib.ggml_free.argtypes = [ctypes.c_void_p]
    for line in sys.stdin:
        path = line.rstrip("\n")
        ctx = ctypes.c_void_p()
        # no_alloc=False: gguf.cpp also reads the data section, as test-gguf.cpp does
        params = InitParams(False, ctypes.cast(ctypes.pointer(ctx), ctypes.c_void_p))
        handle = lib.gguf_init_from_file(path.encode(), params)
        if handle:
            lib.gguf_free(handle)
        if ctx.value:
            lib.ggml_free(ctx)
        print("@@verdict", 1 if handle else 0, flush=True)


if __name__ == "__main__":
    main()
