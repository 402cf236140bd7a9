"""The heap recorder where the native extension is not built: tracemalloc, which traces every
block (exact, but costly: it is only started by an explicit rate) and knows only what is live,
and files and lines rather than functions."""

from __future__ import annotations

import tracemalloc

from pyprofiler.samplers.frames import modules_by_filename
from pyprofiler.samplers.heap import HeapRecord
from pyprofiler.samplers.native import unavailable_reason
from pyprofiler.snapshot import Frame

FRAMES = 32


class TracemallocHeap:
    sees_frees = False
    unavailable_reason = unavailable_reason

    def set_rate(self, rate: int) -> None:
        if rate > 0 and not tracemalloc.is_tracing():
            tracemalloc.start(FRAMES)
        elif rate == 0 and tracemalloc.is_tracing():
            tracemalloc.stop()

    def get_rate(self) -> int:
        return 1 if tracemalloc.is_tracing() else 0

    def start_by_default(self, rate: int) -> None:
        """Tracing every block costs too much to start unasked."""

    def recording(self) -> bool:
        return tracemalloc.is_tracing()

    def records(self) -> list[HeapRecord]:
        modules = modules_by_filename()
        records = []
        for stat in tracemalloc.take_snapshot().statistics("traceback"):
            # tracemalloc knows files and lines, not functions: frames are named by module.
            frames = tuple(
                Frame(modules.get(f.filename, f.filename), f.filename, 0, f.lineno)
                for f in stat.traceback
            )
            records.append(HeapRecord(frames, stat.count, 0, stat.size, 0))
        return records

    def record_count(self) -> int:
        return 0

    def retired(self) -> int:
        return 0

    def stats(self) -> list[tuple[str, object]]:
        traced, peak = tracemalloc.get_traced_memory() if tracemalloc.is_tracing() else (0, 0)
        return [
            ("Tracemalloc", tracemalloc.is_tracing()),
            ("TracedBytes", traced),
            ("TracedPeakBytes", peak),
            ("SamplerBytes", tracemalloc.get_tracemalloc_memory()),
        ]
