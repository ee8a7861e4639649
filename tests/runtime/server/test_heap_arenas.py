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


MMAP_PROBE = r"""
import ctypes, ctypes.util, sys
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Info
if sys.argv[1] == "fix":
    from dx.server.app import fix_mmap_threshold
    assert fix_mmap_threshold()
big = bytearray(4 << 20)
del big  # glibc raises its mmap threshold to 4 MiB here, unless it is fixed
held = bytearray(1 << 20)
print(libc.mallinfo2().hblkhd >= 1 << 20)  # the megabyte is mapped (given back when freed), not heap
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and mallinfo2")
def test_dx_serve_maps_megabyte_buffers_after_a_bigger_one_was_freed() -> None:
    """The short soak run's heap slope: after the first big buffer freed (a pull, an upload), glibc served the next
    megabyte buffers from the heap, which kept its high-water mark; dx serve fixes the mmap threshold."""
    def mapped(mode: str) -> bool:
        res = subprocess.run([sys.executable, "-c", MMAP_PROBE, mode], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip() == "True"

    assert mapped("fix")
    assert not mapped("none")  # glibc's dynamic threshold is what the fix turns off
