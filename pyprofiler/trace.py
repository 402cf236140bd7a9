"""The trace behind /debug/pprof/trace: a timeline of the window, per thread and per asyncio task,
as Chrome trace-event JSON (render_trace.py) from the recorder of samplers/trace.py.

Go's name and parameters (`seconds`, 1 by default, as Go's); where Go writes its execution
trace for `go tool trace`, this writes what Perfetto UI, chrome://tracing and speedscope open.
`mode=sampled` (the default) shows sampled stacks; `mode=calls` every Python call, at a cost.
One trace at a time, as in Go.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO

from pyprofiler import hangup, registry, render_trace
from pyprofiler.errors import ProfileUnavailableError
from pyprofiler.samplers import trace
from pyprofiler.samplers.trace import MODES, TraceRecords
from pyprofiler.snapshot import Snapshot

DEFAULT_SECONDS = 1  # Go's, for its trace.


class TraceProfile(registry.Profile):
    name = "trace"
    description = (
        "A timeline of the window, for Perfetto UI, chrome://tracing or speedscope (Chrome "
        "trace-event JSON): each thread's sampled stacks as nested slices (mode=calls: every "
        "Python call, at a higher cost), garbage collections, asyncio task steps and tasks. "
        "You can specify the duration in the seconds GET parameter (1 by default)."
    )
    timed = True
    sees_own_threads = True
    options = {"mode": MODES}
    default_seconds = DEFAULT_SECONDS
    activity = "tracing"
    mergeable = False

    def record(
        self, seconds: float | None = None, mode: str = "sampled", include_self: bool = False
    ) -> TraceRecords:
        """The timeline over `seconds`, or until the client of this thread's request hangs up;
        pyprofiler's own threads only if `include_self`."""
        window = trace.open_trace(mode, include_self)
        try:
            hangup.sleep(DEFAULT_SECONDS if seconds is None else seconds)
        finally:
            records = window.close()
        return records

    def snapshot(self, seconds: float | None = None, include_self: bool = False) -> Snapshot:
        raise ProfileUnavailableError("a trace is a timeline, not a profile.proto profile")

    def write_to(
        self,
        file: IO[bytes],
        debug: int = 0,
        seconds: float | None = None,
        include_self: bool = False,
        options: Mapping[str, str] | None = None,
    ) -> None:
        """The trace over `seconds` as gzipped trace-event JSON, in the `mode` of `options`
        (sampled by default)."""
        mode = (options or {}).get("mode", MODES[0])
        render_trace.write(self.record(seconds, mode, include_self), file)


registry.register(TraceProfile())
