"""The CPU and wall-clock samplers: a thread that reads every thread's stack `hz` times a second,
with no signal handlers (they interrupt blocking calls with EINTR and collide with the
application's own).

With the C extension the thread is native (samplers/_native/sampler.c): it holds the GIL only
while it reads the other threads and creates no Python objects until stop(). Without it (or with
PYPROFILER_NATIVE=0) it is a Python daemon thread reading sys._current_frames().

CPU: each tick, every thread's CPU clock is read; a thread that used CPU since the previous tick
gets its current stack recorded, weighted by the nanoseconds it used, so idle threads never
appear and the profile's total matches the CPU the process spent. Wall: every thread's stack is
recorded each tick, weighted by the wall time since the previous tick.

pyprofiler's own threads (creation.OWN_THREAD_PREFIX) are not sampled unless
include_own_threads(True) says so; the sampler threads never sample themselves or each other.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time

from pyprofiler import creation, threadclock
from pyprofiler.frames import FrameNamer
from pyprofiler.native import native
from pyprofiler.snapshot import Frame, Sample, Snapshot, ValueType
from pyprofiler.stack_table import STACK_TABLE_FULL, StackTable

log = logging.getLogger("pyprofiler")

# Where the CPU of a thread goes that used CPU in the window but was never on one at a sampling
# instant (it lived or computed for less than a period or two): not to the line it blocks at.
NOT_SEEN_ON_A_CPU = Frame("[pyprofiler: thread not seen on a CPU]", "<pyprofiler>", 0, 0)

# Idents of all running sampler threads: samplers never profile themselves or each other.
_sampler_idents: set[int] = set()
# Sampler threads do not survive fork, and the child may reuse their idents.
os.register_at_fork(after_in_child=_sampler_idents.clear)

# The native sampler copies stacks with process_vm_readv, which a seccomp policy can deny.
_reads_without_gil = native is not None and native.stack_reads_available()

# Native samplers still running. Their threads must be stopped while the interpreter can still
# be entered: at exit, before finalization (in a forked child, stop() only hands the table over).
_running_native: set = set()


def _stop_native_samplers() -> None:
    while _running_native:
        try:
            _running_native.pop().stop()  # What it recorded is discarded.
        except Exception:  # Exiting anyway: never a traceback into the host's exit.
            log.exception("pyprofiler: stopping a sampler at exit failed")


atexit.register(_stop_native_samplers)


class StackSampler:
    """One profiling session: start(), then stop() returns the Snapshot; cut() in between
    returns the window so far and goes on sampling, so that consecutive windows neither miss
    nor count twice anything between them."""

    value_type: ValueType
    wall: bool  # Weighted by wall time rather than CPU.

    def __init__(self, hz: int = 100) -> None:
        if not 1 <= hz <= 1000:
            raise ValueError(f"hz must be between 1 and 1000, not {hz}")
        self.hz = hz
        self.own_cpu_ns = 0  # The sampler thread's own CPU, known once stopped.
        self.error: str | None = None
        self.stats: dict[str, int] = {}  # The native sampler's account of itself, once stopped.
        self._native = native.StackSampler(hz, self.wall) if _reads_without_gil else None
        self._include_own = False
        # The Python thread's state:
        self.table = StackTable()
        self._stopping = threading.Event()
        self._expiry_lock = threading.Lock()
        self._expires_at: float | None = None
        self._expired = False
        self._thread: threading.Thread | None = None
        self._start_wall_ns = 0
        self._start_ns = 0

    def start(self) -> None:
        self._start_wall_ns = time.time_ns()
        self._start_ns = time.monotonic_ns()
        if self._native is not None:
            self._native.start()
            _running_native.add(self._native)
            return
        self._begin()
        self._thread = threading.Thread(
            target=self._run, name=f"pyprofiler-{type(self).__name__}", daemon=True
        )
        self._thread.start()

    def stop(self) -> Snapshot:
        if self._native is not None:
            _running_native.discard(self._native)
            records, unseen, self.own_cpu_ns, self.error, self.stats = self._native.stop()
            samples = self._native_samples(records, unseen)
        else:
            self._stopping.set()
            if self._thread is not None:
                self._thread.join()
            samples = self.table.samples()
        return self._window(samples, time.time_ns(), time.monotonic_ns())

    def cut(self) -> Snapshot | None:
        """The window since start() or the previous cut(); sampling goes on into the next, and
        any expiry is called off. None once the sampler has ended on its own."""
        end_wall_ns, end_ns = time.time_ns(), time.monotonic_ns()
        if self._native is not None:
            window = self._native.cut()
            if window is None:
                return None
            records, unseen, self.stats = window
            samples = self._native_samples(records, unseen)
        else:
            with self._expiry_lock:
                self._expires_at = None
                if self._expired:
                    return None
            # Ticks land in one table or the other, whole samples each.
            table, self.table = self.table, StackTable()
            samples = table.samples()
        return self._window(samples, end_wall_ns, end_ns)

    def include_own_threads(self, include: bool) -> None:
        """Whether pyprofiler's own threads are sampled from now on (by default not). Their
        samples are named after them, `pyprofiler-...`, so that a window can leave them out."""
        self._include_own = include
        if self._native is not None:
            self._native.include_own_threads(include)

    def expire_after(self, seconds: float) -> None:
        """End on its own `seconds` from now, discarding what was recorded since the last
        cut(), unless cut() or stop() comes first; stop() must still be called."""
        if self._native is not None:
            self._native.expire_after(seconds)
            return
        with self._expiry_lock:
            self._expires_at = time.monotonic() + seconds

    def _window(self, samples: list[Sample], end_wall_ns: int, end_ns: int) -> Snapshot:
        snapshot = Snapshot(
            sample_types=(ValueType("samples", "count"), self.value_type),
            period_type=self.value_type,
            period=1_000_000_000 // self.hz,
            time_nanos=self._start_wall_ns,
            duration_nanos=end_ns - self._start_ns,
            samples=samples,
            comments=self._comments(),
        )
        self._start_wall_ns, self._start_ns = end_wall_ns, end_ns
        return snapshot

    def _comments(self) -> tuple[str, ...]:
        """What the native sampler left out, for `go tool pprof -comments`."""
        dropped, unpinned = self.stats.get("dropped", 0), self.stats.get("unpinned", 0)
        comments = []
        if dropped:
            comments.append(f"pyprofiler: {dropped} samples dropped: stacks changing as copied")
        if unpinned:
            comments.append(f"pyprofiler: {unpinned} samples dropped: code objects not pinned")
        return tuple(comments)

    def _native_samples(self, records: list, unseen: list) -> list[Sample]:
        # Threads are named as threading names them at stop. One that has exited since its
        # samples (its ident may now be another thread's) is named by its kernel id, as threads
        # that threading does not know are.
        threads = threading._active  # type: ignore[attr-defined]

        def thread_name(ident: int, tid: int, alive: bool, own: bool) -> str:
            thread = threads.get(ident) if alive else None
            if thread is not None:
                name = thread.name
            elif tid:
                name = f"thread-{tid}"
            elif own:  # Ended before the sampler learnt its kernel id.
                name = "thread"
            else:
                return "[pyprofiler: thread table full]"
            return creation.own_thread_name(name) if own else name

        namer = FrameNamer()
        samples = []
        for stack, ident, tid, alive, own, value, count in records:
            frames = namer.stack(stack) if stack is not None else (STACK_TABLE_FULL,)
            labels = (("thread", thread_name(ident, tid, alive, own)),)
            samples.append(Sample(frames, (count, value), labels))
        for ident, tid, alive, own, cpu_ns in unseen:
            labels = (("thread", thread_name(ident, tid, alive, own)),)
            samples.append(Sample((NOT_SEEN_ON_A_CPU,), (0, cpu_ns), labels))
        return samples

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
                    self._tick(sys._current_frames())
                    break
                if self._expires_at is not None:
                    with self._expiry_lock:
                        expires_at = self._expires_at
                        self._expired = expires_at is not None and time.monotonic() >= expires_at
                    if self._expired:
                        self.table = StackTable()
                        break
                self._tick(sys._current_frames())
                next_tick += interval
                now = time.monotonic()
                if next_tick < now:  # Fell behind (a long GIL hold): skip ticks, never burst.
                    next_tick = now + interval
        except Exception as exc:  # A sampler switches itself off; it never raises into the host.
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("pyprofiler: %s stopped after an error", type(self).__name__)
        finally:
            self.own_cpu_ns = time.thread_time_ns()
            _sampler_idents.discard(threading.get_ident())

    def _begin(self) -> None:
        """Read whatever the first tick is measured against."""

    def _tick(self, frames: dict) -> None:
        raise NotImplementedError


class CpuSampler(StackSampler):
    value_type = ValueType("cpu", "nanoseconds")
    wall = False

    def __init__(self, hz: int = 100) -> None:
        if not threadclock.SUPPORTED:
            raise NotImplementedError("the CPU profile needs Linux per-thread CPU clocks")
        super().__init__(hz)
        self._last_cpu: dict[tuple[int, int], int] = {}

    def _begin(self) -> None:
        self._last_cpu = self._read_clocks(sys._current_frames(), None)

    def _tick(self, frames: dict) -> None:
        self._last_cpu = self._read_clocks(frames, self._last_cpu)

    def _read_clocks(
        self, frames: dict, previous: dict[tuple[int, int], int] | None
    ) -> dict[tuple[int, int], int]:
        # threading._active maps idents to Thread objects without taking threading's lock.
        threads = threading._active  # type: ignore[attr-defined]
        read_clock = threadclock.thread_cpu_ns
        native_id = creation.native_id
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
            if not self._include_own and creation.is_own_thread(ident, thread):
                continue  # Its clock is still read: let in later, it is measured from then on.
            if previous is not None:
                # A thread first seen now started after the previous tick: all its CPU is new.
                used = cpu - previous.get(key, 0)
                if used > 0:
                    self.table.add(frame, thread.name if thread else f"thread-{tid}", used)
        return current


class WallSampler(StackSampler):
    value_type = ValueType("wall", "nanoseconds")
    wall = True

    def _begin(self) -> None:
        self._last_tick_ns = time.monotonic_ns()

    def _tick(self, frames: dict) -> None:
        now = time.monotonic_ns()
        elapsed = now - self._last_tick_ns
        self._last_tick_ns = now
        threads = threading._active  # type: ignore[attr-defined]
        for ident, frame in frames.items():
            if ident in _sampler_idents:
                continue
            thread = threads.get(ident)
            if not self._include_own and creation.is_own_thread(ident, thread):
                continue
            self.table.add(frame, thread.name if thread else f"thread {ident}", elapsed)
