"""dx serve caps glibc's malloc arenas at 2, so its heap does not grow with each new thread.

Found by the soak run (tests/bench/soak.py): dx's heap (RssAnon) went 21 -> 40 MiB in 10
minutes, in steps at the in-server pulls and uploads, which run on short-lived threads that
glibc gave new arenas (kept for good). Measured over 16 in-server pulls of 8 MiB: 24.7 -> 28.7
MiB without the cap, 22.8 -> 24.7 then flat with it. Here: 8 threads allocating at once
make 9 arenas without the cap, at most 2 with it (glibc's own malloc_info counts them).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, ctypes.util, os, sys, tempfile, threading
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fdopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
libc.fflush.argtypes = (ctypes.c_void_p,)
if sys.argv[1] == "cap":
    from dx.server.app import cap_malloc_arenas
    assert cap_malloc_arenas()
gate = threading.Barrier(8)
def work():
    gate.wait()
    for _ in range(200):
        b = bytearray(200_000)
        del b
threads = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
f = tempfile.TemporaryFile()
fp = libc.fdopen(os.dup(f.fileno()), b"w")
libc.malloc_info(0, fp)
libc.fflush(fp)
f.seek(0)
print(f.read().decode().count("<heap nr="))
"""


def _arenas(mode: str) -> int:
    res = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return int(res.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and malloc_info")
def test_dx_serve_keeps_at_most_two_malloc_arenas() -> None:
    assert _arenas("cap") <= 2
    assert _arenas("none") > 2  # the probe does make arenas: without the cap the assertion above could fail
