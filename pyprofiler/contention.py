"""The block and mutex profiles, built from what the lock recorder (samplers/locks.py) holds:
where threads and tasks wait, and whose release made them wait."""

from __future__ import annotations

import time

from pyprofiler import registry
from pyprofiler.render_text import contention_text
from pyprofiler.samplers import locks
from pyprofiler.samplers.frames import FrameNamer
from pyprofiler.snapshot import Frame, Sample, Snapshot, ValueType, table_full

TABLE_FULL = table_full("contention")


class _ContentionProfile(registry.Profile):
    supports_delta = True

    def header(self) -> str:
        raise NotImplementedError

    def count(self) -> int:
        return len({(raw, label, labels) for raw, label, _, _, labels in locks.recorded(self.name)})

    def _entries(self) -> list[tuple[tuple[Frame, ...], tuple[tuple[str, str], ...], int, int]]:
        """(frames, labels, count, delay) per (stack, lock label, label set)."""
        merged: dict[tuple, list[float]] = {}
        for raw, label, count, delay, labels in locks.recorded(self.name):
            total = merged.setdefault((raw, label, labels), [0.0, 0.0])
            total[0] += count
            total[1] += delay
        namer = FrameNamer()
        return [
            (
                namer.stack(raw) if raw else (TABLE_FULL,),
                ((("lock", label),) if label else ()) + labels,
                round(count),
                round(delay),
            )
            for (raw, label, labels), (count, delay) in merged.items()
        ]

    def snapshot(self, seconds: float | None = None) -> Snapshot:
        return Snapshot(
            sample_types=(ValueType("contentions", "count"), ValueType("delay", "nanoseconds")),
            period_type=ValueType("contentions", "count"),
            period=1,
            time_nanos=time.time_ns(),
            samples=[
                Sample(frames, (count, delay), labels)
                for frames, labels, count, delay in self._entries()
            ],
        )

    def text(self, debug: int) -> list[str]:
        by_stack: dict[tuple[Frame, ...], list[int]] = {}
        for frames, _, count, delay in self._entries():  # The text has no labels: one per stack.
            total = by_stack.setdefault(frames, [0, 0])
            total[0] += count
            total[1] += delay
        records = [(delay, count, frames) for frames, (count, delay) in by_stack.items()]
        return [contention_text(self.header(), records)]


class BlockProfile(_ContentionProfile):
    name = "block"
    description = "Stack traces that led to blocking on synchronization primitives"

    def header(self) -> str:
        return "--- contention:\ncycles/second=1000000000"


class MutexProfile(_ContentionProfile):
    name = "mutex"
    description = "Stack traces of holders of contended mutexes"

    def header(self) -> str:
        return f"--- mutex:\ncycles/second=1000000000\nsampling period={locks.mutex_fraction()}"


registry.register(BlockProfile())
registry.register(MutexProfile())
