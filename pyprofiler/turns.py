"""pyprofiler's threads compute one at a time, so that the application's threads wait for the
GIL behind one of them at most.

Building a profile, parsing a request, merging the profiles of a group: each holds the GIL most
of its time, so several side by side only take turns with each other, and a thread of the
application then waits for the GIL behind every one of them (eight heap profiles asked at once
kept a thread of a host from running for 170 ms; one at a time, for 40 ms). So that work takes
a turn (`turn()`), and gives it up while it waits for something else (`waiting()`): a profile's
seconds, a client's body, a member's answer. A turn is waited for TURN_WAIT seconds at most;
after that the work goes ahead anyway, as it did before turns existed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from pyprofiler.samplers.own_locks import OwnLock

TURN_WAIT = 30.0

_lock = OwnLock()
_held = threading.local()  # .depth: how many turn() blocks this thread is in; .owns: the lock.


@contextlib.contextmanager
def turn() -> Iterator[None]:
    """Within this block no other thread of pyprofiler computes (blocks nest)."""
    depth = getattr(_held, "depth", 0)
    if depth == 0:
        _held.owns = _lock.acquire(timeout=TURN_WAIT)
    _held.depth = depth + 1
    try:
        yield
    finally:
        _held.depth = depth
        if depth == 0 and _held.owns:
            _held.owns = False
            _lock.release()


@contextlib.contextmanager
def waiting() -> Iterator[None]:
    """Within this block this thread waits for something else: its turn, if it has one, is
    given up meanwhile and taken again after."""
    depth = getattr(_held, "depth", 0)
    if depth == 0:
        yield
        return
    if _held.owns:
        _held.owns = False
        _lock.release()
    _held.depth = 0
    try:
        yield
    finally:
        _held.owns = _lock.acquire(timeout=TURN_WAIT)
        _held.depth = depth


def after_fork_in_child() -> None:
    # The thread that had the turn at fork does not exist in the child (own_locks makes the
    # lock anew).
    global _held
    _held = threading.local()
