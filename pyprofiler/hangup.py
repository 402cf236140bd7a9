"""The client of the request a thread is answering, and whether it has gone away: what Go's
handlers read from the request's context.

The HTTP layer sets the request's hang-up signal around a profile (`watching`); the profiles
that wait (CPU, wall, `?seconds=` deltas) wait with `sleep`, which ends as soon as the client
hangs up, so that an abandoned profile frees its profiler at once.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Protocol

from pyprofiler import turns


class Signal(Protocol):
    """Set when the client has gone away: a threading.Event, or one that watches a socket."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


_current = threading.local()


@contextlib.contextmanager
def watching(signal: Signal | None) -> Iterator[None]:
    """Within this block, `sleep` on this thread ends when `signal` is set."""
    previous = getattr(_current, "signal", None)
    _current.signal = signal
    try:
        yield
    finally:
        _current.signal = previous


def sleep(seconds: float) -> bool:
    """Wait `seconds`, or less if the client of this thread's request goes away meanwhile;
    True if it has gone."""
    signal = getattr(_current, "signal", None)
    with turns.waiting():  # Others may compute meanwhile.
        if signal is None:
            time.sleep(seconds)
            return False
        return signal.wait(seconds)


def client_gone() -> bool:
    signal = getattr(_current, "signal", None)
    return signal is not None and signal.is_set()


class SocketHangup:
    """Set once the client of a connection has gone away: the peer closed its end, which is
    when Go's server cancels the request's context too. Waiting is one poll() call, which
    returns as soon as the peer closes."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection
        self._gone = threading.Event()

    def is_set(self) -> bool:
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> bool:
        if self._gone.is_set():
            return True
        fileno = self._connection.fileno()  # -1 once closed.
        if fileno < 0:
            self._gone.set()
            return True
        poller = select.poll()
        poller.register(fileno, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        if poller.poll(None if timeout is None else max(0, round(timeout * 1000))):
            self._gone.set()
        return self._gone.is_set()
