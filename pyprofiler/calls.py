"""The calls profile behind /debug/pprof/calls: every call of every thread counted and timed by
yappi over a window (samplers/calls.py), where the sampled profiles can only estimate.

As pprof, its samples are caller -> callee pairs: stack [callee, caller], valued with the
callee's calls from that caller and its own time under it. A function's calls that no caller
recorded in the window made (a thread's first function, a callee of a frame already running
when the window opened) are a one-frame sample. So `-top`'s flat column is each function's
exact calls and own time, and the graph's and `-peek`'s edges are exact call counts; cum is
one level deep (a function and what it called directly), not the time under it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO

from pyprofiler import hangup, registry, render_calls
from pyprofiler.samplers import calls
from pyprofiler.samplers.calls import CallRecords, CallStats
from pyprofiler.snapshot import Frame, Sample, Snapshot, ValueType

DEFAULT_SECONDS = 1  # As Go's /debug/pprof/trace: every call costs while a window is open.
FORMATS = ("pprof", "pstats", "callgrind")
_FILENAMES = {"pprof": "calls", "pstats": "calls.pstats", "callgrind": "callgrind.out.calls"}


class CallProfile(registry.Profile):
    name = "calls"
    description = (
        "Deterministic call profile by yappi: how many times each function was called, by "
        "whom, and its own time (clock=cpu|wall), over the seconds GET parameter (1 by "
        "default). Every call is slowed while it runs. format=pstats or format=callgrind for "
        "pstats/snakeviz or KCachegrind."
    )
    timed = True
    sees_own_threads = True
    options = {"clock": calls.CLOCKS, "format": FORMATS}
    default_seconds = DEFAULT_SECONDS

    def filename(self, options: Mapping[str, str]) -> str:
        return _FILENAMES[options.get("format", "pprof")]

    def record(
        self, seconds: float | None = None, clock: str = "cpu", include_self: bool = False
    ) -> CallRecords:
        """Every call over `seconds`, or until the client of this thread's request hangs up;
        pyprofiler's own threads only if `include_self`."""
        window = calls.open_window(clock)
        try:
            hangup.sleep(DEFAULT_SECONDS if seconds is None else seconds)
        finally:
            records = window.close(include_self)
        return records

    def snapshot(
        self, seconds: float | None = None, include_self: bool = False, clock: str = "cpu"
    ) -> Snapshot:
        return call_snapshot(self.record(seconds, clock, include_self))

    def write_to(
        self,
        file: IO[bytes],
        debug: int = 0,
        seconds: float | None = None,
        include_self: bool = False,
        options: Mapping[str, str] | None = None,
    ) -> None:
        """The profile over `seconds` in the `format` of `options` (pprof by default), timed
        by its `clock` (cpu by default)."""
        options = options or {}
        records = self.record(seconds, options.get("clock", "cpu"), include_self)
        form = options.get("format", "pprof")
        if form == "pstats":
            file.write(render_calls.pstats_data(records))
        elif form == "callgrind":
            file.write("".join(render_calls.callgrind_lines(records)).encode())
        else:
            registry.write_snapshot(call_snapshot(records), file)


def call_snapshot(records: CallRecords) -> Snapshot:
    """The records as a profile of caller -> callee samples (see the module's docstring)."""
    samples = []
    from_callers: dict[Frame, list[CallStats]] = {}
    for (caller, callee), edge in records.edges.items():
        samples.append(Sample((callee, caller), (edge.calls, edge.own_ns)))
        from_callers.setdefault(callee, []).append(edge)
    for frame, function in records.functions.items():
        edges = from_callers.get(frame, [])
        calls_left = function.calls - sum(edge.calls for edge in edges)
        own_left = function.own_ns - sum(edge.own_ns for edge in edges)
        # yappi's times are float seconds: each edge may differ from the sum by a rounding.
        if calls_left > 0 or own_left > len(edges):
            samples.append(Sample((frame,), (max(calls_left, 0), max(own_left, 0))))
    return Snapshot(
        sample_types=(ValueType("calls", "count"), ValueType(records.clock, "nanoseconds")),
        period_type=ValueType("calls", "count"),
        period=1,
        time_nanos=records.start_ns,
        duration_nanos=records.duration_ns,
        samples=samples,
        comments=(
            f"pyprofiler: every call counted by yappi, {records.clock} clock; a sample is a "
            "caller -> callee pair [callee, caller]: its calls and the callee's own time",
        ),
    )


registry.register(CallProfile())
