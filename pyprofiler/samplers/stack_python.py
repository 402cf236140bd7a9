"""The Python stack sampling backend: a daemon thread reading sys._current_frames() each tick
into a StackTable, for where the native sampler is not built or cannot read stacks."""

from __future__ import annotations

import sys
import threading
import time

from pyprofiler.samplers import creation, threadclock
from pyprofiler.samplers.own_locks import OwnLock
from pyprofiler.samplers.stack_table import StackTable
from pyprofiler.snapshot import Sample

# Idents of all running sampler threads: samplers never profile themselves or each other.
_sampler_idents: set[int] = set()


def after_fork_in_child() -> None:
    # Sampler threads do not survive fork, and the child may reuse their idents.
    _sampler_idents.clear()


class PythonStackBackend:
    def __init__(self, hz: int, wall: bool) -> None:
        self.hz = hz
        self.own_cpu_ns = 0
        self.error: str | None = None
        self.table = StackTable()
        self.ticks = _WallTicks(self) if wall else _CpuTicks(self)
        self._name = f"pyprofiler-{'Wall' if wall else 'Cpu'}Sampler"
        self._include_own = False
        self._stopping = threading.Event()
        self._expiry_lock = OwnLock()
        self._expires_at: float | None = None
        self._expired = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.ticks.begin()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> tuple[list[Sample], str | None, dict[str, int]]:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        return self.table.samples(), self.error, {}

    def cut(self) -> tuple[list[Sample], dict[str, int]] | None:
        with self._expiry_lock:
            self._expires_at = None
            if self._expired:
                return None
        # Ticks land in one table or the other, whole samples each.
        table, self.table = self.table, StackTable()
        return table.samples(), {}

    def include_own_threads(self, include: bool) -> None:
        self._include_own = include

    def expire_after(self, seconds: float) -> None:
        with self._expiry_lock:
            self._expires_at = time.monotonic() + seconds

    def _run(self) -> None:
        _sampler_idents.add(threading.get_ident())
        interval = 1.0 / self.hz
        next_tick = time.monotonic() + interval
        stopping = self._stopping
        try:
            while True:
                # time.sleep, not Event.wait(timeout): a timed wait builds a lock and a waiter
                # list each time, which was a fair part of a tick's cost. Stops within 50 ms.
                delay = next_tick - time.monotonic()
                while delay > 0 and not stopping.is_set():
                    time.sleep(min(delay, 0.05))
                    delay = next_tick - time.monotonic()
                if stopping.is_set():
                    # One last reading: the CPU used since the previous tick belongs in the
                    # profile too (ticks can be far apart when many threads want the GIL).
                    self.ticks.tick(sys._current_frames())
                    break
                if self._expires_at is not None:
                    with self._expiry_lock:
                        expires_at = self._expires_at
                        self._expired = expires_at is not None and time.monotonic() >= expires_at
                    if self._expired:
                        self.table = StackTable()
                        break
                self.ticks.tick(sys._current_frames())
                next_tick += interval
                now = time.monotonic()
                if next_tick < now:  # Fell behind (a long GIL hold): skip ticks, never burst.
                    next_tick = now + interval
        except Exception as exc:  # A sampler switches itself off; it never raises into the host.
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.own_cpu_ns = time.thread_time_ns()
            _sampler_idents.discard(threading.get_ident())


class _CpuTicks:
    """Each tick, the stacks of the threads that used CPU since the previous one, weighted by
    the nanoseconds they used."""

    def __init__(self, backend: PythonStackBackend) -> None:
        self._backend = backend
        self._last_cpu: dict[tuple[int, int], int] = {}

    def begin(self) -> None:
        self._last_cpu = self._read_clocks(sys._current_frames(), None)

    def tick(self, frames: dict) -> None:
        self._last_cpu = self._read_clocks(frames, self._last_cpu)

    def _read_clocks(
        self, frames: dict, previous: dict[tuple[int, int], int] | None
    ) -> dict[tuple[int, int], int]:
        # threading._active maps idents to Thread objects without taking threading's lock.
        threads = threading._active  # type: ignore[attr-defined]
        read_clock = threadclock.thread_cpu_ns
        native_id = creation.native_id
        backend = self._backend
        current = {}
        for ident, frame in frames.items():
            if ident in _sampler_idents:
                continue
            thread = threads.get(ident)
            tid = native_id(ident, thread)
            if tid is None:
                continue
            cpu = read_clock(tid)
            if cpu is None:  # Exited since _current_frames().
                continue
            key = (ident, tid)
            current[key] = cpu
            if not backend._include_own and creation.is_own_thread(ident, thread):
                continue  # Its clock is still read: let in later, it is measured from then on.
            if previous is not None:
                # A thread first seen now started after the previous tick: all its CPU is new.
                used = cpu - previous.get(key, 0)
                if used > 0:
                    backend.table.add(frame, thread.name if thread else f"thread-{tid}", used)
        return current


class _WallTicks:
    """Each tick, every thread's stack, weighted by the wall time since the previous one."""

    def __init__(self, backend: PythonStackBackend) -> None:
        self._backend = backend
        self._last_tick_ns = 0

    def begin(self) -> None:
        self._last_tick_ns = time.monotonic_ns()

    def tick(self, frames: dict) -> None:
        now = time.monotonic_ns()
        elapsed = now - self._last_tick_ns
        self._last_tick_ns = now
        threads = threading._active  # type: ignore[attr-defined]
        backend = self._backend
        for ident, frame in frames.items():
            if ident in _sampler_idents:
                continue
            thread = threads.get(ident)
            if not backend._include_own and creation.is_own_thread(ident, thread):
                continue
            backend.table.add(frame, thread.name if thread else f"thread {ident}", elapsed)
