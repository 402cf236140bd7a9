"""The CPU and wall profiles: `runtime/pprof`'s StartCPUProfile/StopCPUProfile and the registry
entries behind /debug/pprof/profile and /debug/pprof/wall.

Each kind has one sampler, shared by every window open on it: profiles taken over HTTP or
from the registry (several at once: two scrapers asking for 14-second CPU profiles every 15
seconds both get theirs, where Go refuses the second), the one of start_cpu_profile (one at a
time, as Go's StartCPUProfile) and the periodic writer's windows. Opening or
closing a window cuts the sampler's table (StackSampler.cut) and hands what it held to every
window open, so windows that follow each other neither miss nor count twice anything between
them. When the last window closes the sampler goes on for LINGER_SECONDS: a profile started in
that time (the next scrape, the next `go tool pprof`) starts where the previous one ended;
after it, the sampler ends on its own and discards what it recorded meanwhile.
"""

from __future__ import annotations

import os
from typing import IO

from pyprofiler import hangup, registry
from pyprofiler.errors import ProfilerBusyError, PyprofilerError
from pyprofiler.samplers import creation
from pyprofiler.samplers.limits import SAMPLER_MAX_HZ
from pyprofiler.samplers.own_locks import OwnLock
from pyprofiler.samplers.stack import CpuSampler, StackSampler, WallSampler
from pyprofiler.snapshot import Snapshot, merge

DEFAULT_HZ = 100
LINGER_SECONDS = 2.0

_lock = OwnLock()
_rate = DEFAULT_HZ
_cpu_output: IO[bytes] | None = None
_cpu_output_owned = False
_api_window: Window | None = None


class Window:
    """An open profile over one kind's sampler: what the sampler recorded since it opened
    (pyprofiler's own threads only if `include_self`)."""

    def __init__(self, exclusive: bool, include_self: bool = False) -> None:
        self.exclusive = exclusive
        self.include_self = include_self
        self.recorded: Snapshot | None = None

    def add(self, part: Snapshot) -> None:
        if not self.include_self:
            part = part.without_threads(creation.OWN_THREAD_PREFIX)
        self.recorded = part if self.recorded is None else merge([self.recorded, part])


class _Recorder:
    """One kind's sampler and the windows open on it. Every method runs under `_lock`."""

    def __init__(self, kind: str, sampler_class: type[StackSampler]) -> None:
        self.kind = kind
        self.sampler_class = sampler_class
        self.sampler: StackSampler | None = None
        self.windows: list[Window] = []
        self.lingering: Snapshot | None = None  # Recorded since the last window closed.

    def busy(self) -> bool:
        return any(window.exclusive for window in self.windows)

    def open(self, exclusive: bool, hz: int, include_self: bool) -> Window:
        if exclusive and self.busy():
            raise ProfilerBusyError(f"{self.kind} profiling already in use")
        window = Window(exclusive, include_self)
        if self.sampler is not None and not self.windows and self.sampler.hz != hz:
            self._stop_sampler()  # The rate changed while it lingered.
        part = self.sampler.cut() if self.sampler is not None else None
        if part is None:  # Never started, or it lingered out.
            self._stop_sampler()
            sampler = self.sampler_class(hz)
            sampler.start()
            self.sampler = sampler
        else:
            self._distribute(part)
            if self.lingering is not None:
                window.add(self.lingering)
        self.lingering = None
        self.windows.append(window)
        self._sample_own_threads()
        return window

    def take(self, window: Window) -> Snapshot:
        """What `window` recorded so far; it stays open, empty."""
        assert self.sampler is not None
        part = self.sampler.cut()  # Never None while a window is open: it cannot expire.
        assert part is not None
        self._distribute(part)
        recorded, window.recorded = window.recorded, None
        assert recorded is not None
        return recorded

    def close(self, window: Window) -> Snapshot:
        recorded = self.take(window)
        self.windows.remove(window)
        self._sample_own_threads()
        if not self.windows:
            self.lingering = None
            assert self.sampler is not None
            self.sampler.expire_after(LINGER_SECONDS)
        return recorded

    def _distribute(self, part: Snapshot) -> None:
        if not self.windows:
            self.lingering = part if self.lingering is None else merge([self.lingering, part])
        for window in self.windows:
            window.add(part)

    def _sample_own_threads(self) -> None:
        """pyprofiler's own threads are sampled while a window wants them, and only then."""
        if self.sampler is not None:
            self.sampler.include_own_threads(any(w.include_self for w in self.windows))

    def _stop_sampler(self) -> None:
        sampler, self.sampler, self.lingering = self.sampler, None, None
        if sampler is not None:
            sampler.stop()  # What it recorded since the last window closed goes nowhere.

    def forget(self) -> None:
        """In a forked child: the sampler thread stayed in the parent."""
        self.sampler, self.windows, self.lingering = None, [], None


_recorders = {"cpu": _Recorder("cpu", CpuSampler), "wall": _Recorder("wall", WallSampler)}


def open_window(
    kind: str, exclusive: bool = True, hz: int | None = None, include_self: bool = False
) -> Window:
    """Start recording `kind` ("cpu" or "wall") into a new window. An exclusive window
    (start_cpu_profile's, as Go's) fails with ProfilerBusyError while another exclusive one of
    its kind is open; other windows open at any time. `hz` (set_cpu_profile_rate()'s by
    default) applies when the sampler starts; windows opened while it runs share its rate.
    pyprofiler's own threads are left out unless `include_self`."""
    with _lock:
        return _recorders[kind].open(exclusive, _rate if hz is None else hz, include_self)


def take_window(kind: str, window: Window) -> Snapshot:
    """The profile `window` recorded so far; it goes on recording from there."""
    with _lock:
        return _recorders[kind].take(window)


def close_window(kind: str, window: Window) -> Snapshot:
    """The profile `window` recorded; it records no more."""
    with _lock:
        return _recorders[kind].close(window)


def windows_open(kind: str) -> int:
    """How many profiles of `kind` are being taken."""
    with _lock:
        return len(_recorders[kind].windows)


def stop_all() -> None:
    """Close every window and stop the samplers (what they recorded is discarded)."""
    global _api_window, _cpu_output
    with _lock:
        for recorder in _recorders.values():
            recorder.windows.clear()
            recorder._stop_sampler()
        _api_window = _cpu_output = None


def set_cpu_profile_rate(hz: int) -> None:
    """Samples per second of the CPU and wall profiles started from now on (Go's
    runtime.SetCPUProfileRate): 1 to SAMPLER_MAX_HZ (1000), 100 by default. A higher rate
    narrows the noise of a short profile at a higher cost (docs/performance.md). A sampler
    already running for other windows keeps its rate until they close."""
    global _rate
    if not isinstance(hz, int) or not 1 <= hz <= SAMPLER_MAX_HZ:
        raise ValueError(f"hz must be an integer between 1 and {SAMPLER_MAX_HZ}, not {hz!r}")
    _rate = hz


def start_cpu_profile(file: IO[bytes] | str | os.PathLike, hz: int | None = None) -> None:
    """Profile CPU use of every thread until stop_cpu_profile(), which writes the profile to
    `file` (a binary file object, or a path); `hz` defaults to set_cpu_profile_rate()'s (a
    sampler already running for the periodic writer keeps its own)."""
    global _cpu_output, _cpu_output_owned, _api_window
    owned = isinstance(file, (str, os.PathLike))
    output = open(file, "wb") if owned else file  # Fails before anything starts.
    try:
        window = open_window("cpu", hz=hz)
    except BaseException:
        if owned:
            output.close()
        raise
    _api_window, _cpu_output, _cpu_output_owned = window, output, owned


def stop_cpu_profile() -> None:
    """Stop the profile that start_cpu_profile() began and write it out."""
    global _cpu_output, _api_window
    with _lock:
        window, output, owned = _api_window, _cpu_output, _cpu_output_owned
        _api_window = _cpu_output = None
    if window is None or output is None:
        raise PyprofilerError("stop_cpu_profile() called without start_cpu_profile()")
    try:
        registry.write_snapshot(close_window("cpu", window), output)
    finally:
        if owned:
            output.close()


class TimedProfile(registry.Profile):
    """A profile over a window of `seconds` of one kind's sampler ("cpu" or "wall")."""

    timed = True
    kind = ""
    title = ""

    sees_own_threads = True

    def snapshot(self, seconds: float | None = None, include_self: bool = False) -> Snapshot:
        window = open_window(self.kind, exclusive=False, include_self=include_self)
        try:
            hangup.sleep(30 if seconds is None else seconds)  # Ends early if the client goes.
        finally:
            snapshot = close_window(self.kind, window)
        return snapshot


class CpuProfile(TimedProfile):
    name = "profile"
    kind = "cpu"
    title = "CPU"
    description = (
        "CPU profile. You can specify the duration in the seconds GET parameter. After you get "
        "the profile file, use the go tool pprof command to investigate the profile."
    )


class WallProfile(TimedProfile):
    name = "wall"
    kind = "wall"
    title = "wall"
    description = (
        "Wall-clock profile of every thread, idle ones included: where time goes while threads "
        "wait as well as compute. You can specify the duration in the seconds GET parameter."
    )


def after_fork_in_child() -> None:
    # The sampler threads do not exist in a forked child: it starts with nothing running.
    global _cpu_output, _api_window
    for recorder in _recorders.values():
        recorder.forget()
    _cpu_output = _api_window = None


registry.register(CpuProfile())
registry.register(WallProfile())
