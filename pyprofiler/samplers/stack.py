"""The CPU and wall-clock samplers: a thread that reads every thread's stack `hz` times a second,
with no signal handlers (they interrupt blocking calls with EINTR and collide with the
application's own).

A StackSampler is one profiling session over a backend (StackBackend) that does the sampling:
with the C extension a native thread (stack_native.py) that holds the GIL only while it reads
the other threads and creates no Python objects until stop(); without it (or with
PYPROFILER_NATIVE=0) a Python daemon thread reading sys._current_frames() (stack_python.py).
samplers/__init__.py chooses which.

CPU: each tick, every thread's CPU clock is read; a thread that used CPU since the previous tick
gets its current stack recorded, weighted by the nanoseconds it used, so idle threads never
appear and the profile's total matches the CPU the process spent. Wall: every thread's stack is
recorded each tick, weighted by the wall time since the previous tick.

pyprofiler's own threads (creation.OWN_THREAD_PREFIX) are not sampled unless
include_own_threads(True) says so; the sampler threads never sample themselves or each other.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from pyprofiler import samplers
from pyprofiler.samplers import threadclock
from pyprofiler.samplers.limits import SAMPLER_MAX_HZ
from pyprofiler.snapshot import Sample, Snapshot, ValueType

log = logging.getLogger("pyprofiler")


class StackBackend(Protocol):
    """What samples: started once, then cut into windows until stopped. Samples have values
    (count, weight in ns) and a `thread` label."""

    own_cpu_ns: int  # The sampling thread's own CPU, known once stopped.

    def start(self) -> None: ...

    def stop(self) -> tuple[list[Sample], str | None, dict[str, int]]:
        """(samples since the last cut, the error that stopped sampling or None, stats)."""

    def cut(self) -> tuple[list[Sample], dict[str, int]] | None:
        """(samples since the last cut, stats), going on sampling; None once it expired."""

    def include_own_threads(self, include: bool) -> None: ...

    def expire_after(self, seconds: float) -> None: ...


class StackSampler:
    """One profiling session: start(), then stop() returns the Snapshot; cut() in between
    returns the window so far and goes on sampling, so that consecutive windows neither miss
    nor count twice anything between them."""

    value_type: ValueType
    wall: bool  # Weighted by wall time rather than CPU.

    def __init__(self, hz: int = 100) -> None:
        if not 1 <= hz <= SAMPLER_MAX_HZ:
            raise ValueError(f"hz must be between 1 and {SAMPLER_MAX_HZ}, not {hz}")
        self.hz = hz
        self.error: str | None = None
        self.stats: dict[str, int] = {}  # The native sampler's account of itself.
        self._error_logged = False
        self.backend: StackBackend = samplers.stack_backend(hz, self.wall)
        self._wall_minus_monotonic_ns = 0
        self._start_ns = 0

    @property
    def own_cpu_ns(self) -> int:
        """The sampler thread's own CPU, known once stopped."""
        return self.backend.own_cpu_ns

    def start(self) -> None:
        # Windows are timed on the monotonic clock alone, dated by one wall reading here: two
        # readings per cut could be a switch interval apart, leaving gaps between windows.
        self._start_ns = time.monotonic_ns()
        self._wall_minus_monotonic_ns = time.time_ns() - self._start_ns
        self.backend.start()

    def stop(self) -> Snapshot:
        samples, error, self.stats = self.backend.stop()
        self._failed(error)
        return self._window(samples, time.monotonic_ns())

    def cut(self) -> Snapshot | None:
        """The window since start() or the previous cut(); sampling goes on into the next, and
        any expiry is called off. None once the sampler has ended on its own."""
        end_ns = time.monotonic_ns()
        window = self.backend.cut()
        if window is None:
            return None
        samples, self.stats = window
        return self._window(samples, end_ns)

    def include_own_threads(self, include: bool) -> None:
        """Whether pyprofiler's own threads are sampled from now on (by default not). Their
        samples are named after them, `pyprofiler-...`, so that a window can leave them out."""
        self.backend.include_own_threads(include)

    def expire_after(self, seconds: float) -> None:
        """End on its own `seconds` from now, discarding what was recorded since the last
        cut(), unless cut() or stop() comes first; stop() must still be called."""
        self.backend.expire_after(seconds)

    def _failed(self, error: str | None) -> None:
        """The backend stopped sampling after an error: kept for the profile's comments and
        logged once, as a sampler never raises into the host."""
        if error is None:
            return
        self.error = error
        if not self._error_logged:
            self._error_logged = True
            log.error("pyprofiler: the %s sampler stopped: %s", self.value_type.type, error)

    def _window(self, samples: list[Sample], end_ns: int) -> Snapshot:
        snapshot = Snapshot(
            sample_types=(ValueType("samples", "count"), self.value_type),
            period_type=self.value_type,
            period=1_000_000_000 // self.hz,
            time_nanos=self._start_ns + self._wall_minus_monotonic_ns,
            duration_nanos=end_ns - self._start_ns,
            samples=samples,
            comments=self._comments(),
        )
        self._start_ns = end_ns
        return snapshot

    def _comments(self) -> tuple[str, ...]:
        """What the sampler left out or why it stopped, for `go tool pprof -comments`."""
        dropped, unpinned = self.stats.get("dropped", 0), self.stats.get("unpinned", 0)
        comments = []
        if self.error is not None:
            comments.append(f"pyprofiler: sampling stopped early: {self.error}")
        if dropped:
            comments.append(f"pyprofiler: {dropped} samples dropped: stacks changing as copied")
        if unpinned:
            comments.append(f"pyprofiler: {unpinned} samples dropped: code objects not pinned")
        return tuple(comments)


class CpuSampler(StackSampler):
    value_type = ValueType("cpu", "nanoseconds")
    wall = False

    def __init__(self, hz: int = 100) -> None:
        if not threadclock.SUPPORTED:
            raise NotImplementedError("the CPU profile needs Linux per-thread CPU clocks")
        super().__init__(hz)


class WallSampler(StackSampler):
    value_type = ValueType("wall", "nanoseconds")
    wall = True
