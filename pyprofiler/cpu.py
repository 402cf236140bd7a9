"""The CPU and wall profiles: `runtime/pprof`'s StartCPUProfile/StopCPUProfile and the registry
entries behind /debug/pprof/profile and /debug/pprof/wall.

Each kind runs at most once at a time, whether started from the API or over HTTP.
"""

from __future__ import annotations

import os
import threading
import time
from typing import IO

from pyprofiler import proto, registry
from pyprofiler.errors import ProfilerBusyError, PyprofilerError
from pyprofiler.snapshot import Snapshot
from pyprofiler.stack_sampler import CpuSampler, StackSampler, WallSampler

DEFAULT_HZ = 100

_lock = threading.Lock()
_rate = DEFAULT_HZ
_running: dict[str, StackSampler] = {}
_cpu_output: IO[bytes] | None = None
_cpu_output_owned = False


def _start(kind: str, sampler_class: type[StackSampler], hz: int) -> StackSampler:
    with _lock:
        if kind in _running:
            raise ProfilerBusyError(f"{kind} profiling already in use")
        sampler = sampler_class(hz)
        sampler.start()
        _running[kind] = sampler
        return sampler


def _stop(kind: str, sampler: StackSampler) -> Snapshot:
    snapshot = sampler.stop()
    with _lock:
        if _running.get(kind) is sampler:
            del _running[kind]
    return snapshot


def set_cpu_profile_rate(hz: int) -> None:
    """Samples per second of the CPU and wall profiles started from now on (Go's
    runtime.SetCPUProfileRate): 1 to 1000, 100 by default. A higher rate narrows the noise of a
    short profile at a higher cost (docs/performance.md)."""
    global _rate
    if not isinstance(hz, int) or not 1 <= hz <= 1000:
        raise ValueError(f"hz must be an integer between 1 and 1000, not {hz!r}")
    _rate = hz


def start_cpu_profile(file: IO[bytes] | str | os.PathLike, hz: int | None = None) -> None:
    """Profile CPU use of every thread until stop_cpu_profile(), which writes the profile to
    `file` (a binary file object, or a path); `hz` defaults to set_cpu_profile_rate()'s."""
    global _cpu_output, _cpu_output_owned
    owned = isinstance(file, (str, os.PathLike))
    output = open(file, "wb") if owned else file  # Fails before anything starts.
    try:
        _start("cpu", CpuSampler, _rate if hz is None else hz)
    except BaseException:
        if owned:
            output.close()
        raise
    _cpu_output, _cpu_output_owned = output, owned


def stop_cpu_profile() -> None:
    """Stop the profile that start_cpu_profile() began and write it out."""
    global _cpu_output
    with _lock:
        sampler = _running.get("cpu")
        output, owned = _cpu_output, _cpu_output_owned
        _cpu_output = None
    if sampler is None or output is None:
        raise PyprofilerError("stop_cpu_profile() called without start_cpu_profile()")
    try:
        proto.write(_stop("cpu", sampler), output)
    finally:
        if owned:
            output.close()


class _TimedProfile(registry.Profile):
    timed = True
    kind = ""
    title = ""
    sampler_class: type[StackSampler]

    def snapshot(self, seconds: float | None = None) -> Snapshot:
        sampler = _start(self.kind, self.sampler_class, _rate)
        try:
            time.sleep(30 if seconds is None else seconds)
        finally:
            snapshot = _stop(self.kind, sampler)
        return snapshot


class CpuProfile(_TimedProfile):
    name = "profile"
    kind = "cpu"
    title = "CPU"
    sampler_class = CpuSampler
    description = (
        "CPU profile. You can specify the duration in the seconds GET parameter. After you get "
        "the profile file, use the go tool pprof command to investigate the profile."
    )


class WallProfile(_TimedProfile):
    name = "wall"
    kind = "wall"
    title = "wall"
    sampler_class = WallSampler
    description = (
        "Wall-clock profile of every thread, idle ones included: where time goes while threads "
        "wait as well as compute. You can specify the duration in the seconds GET parameter."
    )


def _forget_in_child() -> None:
    # The sampler threads do not exist in a forked child: it starts with nothing running.
    global _lock, _cpu_output
    _lock = threading.Lock()
    _running.clear()
    _cpu_output = None


os.register_at_fork(after_in_child=_forget_in_child)

registry.register(CpuProfile())
registry.register(WallProfile())
