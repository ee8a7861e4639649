"""Waiting for something to happen, with a deadline: the one polling helper of the suite.

A test that sleeps "long enough" for a request to be generating, a file to be written or a
server to have read a socket is a test that fails on a loaded machine and passes on a fast one
without checking what it meant to. Instead, name the event and poll for it: ``wait_until``
returns as soon as it is seen and fails, saying what was awaited and what was last seen, only
after a deadline generous enough for a machine building an engine on its other core.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Seconds to wait by default: far beyond what any awaited event takes on an idle machine.
DEADLINE = 60.0


def wait_until(condition: Callable[[], T], what: str, timeout: float = DEADLINE, interval: float = 0.05) -> T:
    """Call ``condition`` until it returns something truthy, and return that.

    ``condition`` may raise ``AssertionError`` to give up early (the process it waits on died);
    other exceptions count as "not yet" and the last one is reported at the deadline.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = condition()
        except AssertionError:
            raise
        except Exception as exc:  # "not yet": a socket not open, a file half written
            value, last = None, exc  # type: ignore[assignment]
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last seen: {last!r})")
        time.sleep(interval)


def eventually(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Like ``wait_until`` but answers True/False, for ``assert eventually(...), "message"``."""
    try:
        wait_until(condition, "condition", timeout, interval)
    except AssertionError:
        return bool(condition())
    return True
