"""The heap and allocs profiles, as Go's: sampled allocations, with both what was allocated and
what is still live, scaled back to unsampled estimates.

The recording is the samplers' (samplers/heap.py): the native extension's sampling hooks, or
where it was not built (no compiler at install time) tracemalloc, which traces every block
(exact, but costly: it is only started by an explicit `set_mem_profile_rate`) and knows only
what is live, so `allocs` answers an error rather than a wrong number.
"""

from __future__ import annotations

import gc
import math
import resource
import sys
import time
from typing import IO

import psutil

from pyprofiler import registry
from pyprofiler.errors import ProfileUnavailableError
from pyprofiler.render_text import heap_text
from pyprofiler.samplers import heap_recorder
from pyprofiler.samplers.heap import HeapRecord
from pyprofiler.samplers.heap_native import RETIRED
from pyprofiler.snapshot import Sample, Snapshot, ValueType

DEFAULT_RATE = 512 * 1024  # Go's MemProfileRate.

_SAMPLE_TYPES = (
    ValueType("alloc_objects", "count"),
    ValueType("alloc_space", "bytes"),
    ValueType("inuse_objects", "count"),
    ValueType("inuse_space", "bytes"),
)
_rate_chosen = False


def set_mem_profile_rate(rate: int) -> None:
    """Sample one allocation per `rate` bytes on average, as Go's runtime.MemProfileRate.

    1 samples every allocation; 0 removes the allocator hooks, so that they cost nothing.
    Without the native extension, any rate above 0 starts tracemalloc and 0 stops it.
    """
    global _rate_chosen
    if rate < 0:
        raise ValueError(f"the memory profile rate must be 0 or more bytes, not {rate}")
    _rate_chosen = True
    heap_recorder.set_rate(rate)


def get_mem_profile_rate() -> int:
    return heap_recorder.get_rate()


def enable_default() -> None:
    """Turn sampling on at Go's default rate unless the program chose a rate itself."""
    if not _rate_chosen:
        heap_recorder.start_by_default(DEFAULT_RATE)


def _scaled(count: int, nbytes: int, rate: int) -> tuple[int, int]:
    # An allocation of size s is sampled with probability 1 - exp(-s/rate) (Go's scaleHeapSample).
    if count <= 0 or nbytes <= 0 or rate <= 1:
        return count, nbytes
    scale = 1 / (1 - math.exp(-(nbytes / count) / rate))
    return round(count * scale), round(nbytes * scale)


def records(include_self: bool = False) -> list[HeapRecord]:
    """The recorded buckets with named frames and raw counts (what pyprofiler's own threads
    allocated only if `include_self`)."""
    return [r for r in heap_recorder.records() if include_self or not r.own]


def _sampled_snapshot(default_sample_type: str, include_self: bool) -> Snapshot:
    rate = heap_recorder.get_rate()
    samples = []
    for record in records(include_self):
        alloc = _scaled(record.allocs, record.alloc_bytes, rate)
        inuse = _scaled(record.allocs - record.frees, record.alloc_bytes - record.free_bytes, rate)
        size = record.alloc_bytes // record.allocs if record.allocs else 0
        samples.append(
            Sample(
                record.frames,
                alloc + inuse,
                record.labels,
                (("bytes", size, "bytes"),) if size else (),
            )
        )
    retired = heap_recorder.retired()
    comments = (
        (
            f"pyprofiler: {retired} allocation sites without live memory retired to make room; "
            f"their past allocations are under {RETIRED.function}",
        )
        if retired
        else ()
    )
    return Snapshot(
        sample_types=_SAMPLE_TYPES,
        period_type=ValueType("space", "bytes"),
        period=rate,
        time_nanos=time.time_ns(),
        default_sample_type=default_sample_type,
        samples=samples,
        comments=comments,
    )


def _live_snapshot() -> Snapshot:
    if not heap_recorder.recording():
        raise ProfileUnavailableError(
            f"heap profiling is off: pyprofiler's native extension "
            f"{heap_recorder.unavailable_reason}, and its tracemalloc fallback starts only with "
            "pyprofiler.set_mem_profile_rate(1)"
        )
    return Snapshot(
        sample_types=_SAMPLE_TYPES[2:],
        period_type=ValueType("space", "bytes"),
        period=1,
        time_nanos=time.time_ns(),
        samples=[Sample(r.frames, (r.allocs, r.alloc_bytes)) for r in records()],
        comments=("tracemalloc fallback: in-use values only, exact, no function names",),
    )


def memstats() -> list[tuple[str, object]]:
    """The Python counterpart of Go's `# runtime.MemStats` block."""
    memory = psutil.Process().memory_info()
    generations = gc.get_stats()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB.
    stats: list[tuple[str, object]] = [
        ("RSS", memory.rss),
        ("VMS", memory.vms),
        ("PeakRSS", peak_rss),
        ("AllocatedBlocks", sys.getallocatedblocks()),
        ("GCCounts", list(gc.get_count())),
        ("GCThresholds", list(gc.get_threshold())),
        ("GCCollections", [g["collections"] for g in generations]),
        ("GCCollected", [g["collected"] for g in generations]),
        ("GCUncollectable", [g["uncollectable"] for g in generations]),
        ("GCGarbage", len(gc.garbage)),
    ]
    stats += heap_recorder.stats()
    return [(name, _go_format(value)) for name, value in stats]


def _go_format(value: object) -> object:
    if isinstance(value, list):
        return "[" + " ".join(str(v) for v in value) + "]"
    return value


class HeapProfile(registry.Profile):
    name = "heap"
    description = (
        "A sampling of memory allocations of live objects. You can specify the gc GET "
        "parameter to run GC before taking the heap sample."
    )
    supports_delta = True
    sees_own_threads = True
    default_sample_type = "inuse_space"

    def __init__(self) -> None:
        if not heap_recorder.sees_frees:
            self.description += (
                f" (tracemalloc fallback: the native extension "
                f"{heap_recorder.unavailable_reason}; start it with "
                "pyprofiler.set_mem_profile_rate(1))"
            )

    def count(self) -> int:
        return heap_recorder.record_count()

    def snapshot(self, seconds: float | None = None, include_self: bool = False) -> Snapshot:
        if not heap_recorder.sees_frees:
            return _live_snapshot()
        return _sampled_snapshot(self.default_sample_type, include_self)

    def text(self, debug: int, include_self: bool = False) -> list[str]:
        if not heap_recorder.sees_frees:
            raise ProfileUnavailableError(
                f"the debug=1 heap text needs pyprofiler's native extension, which "
                f"{heap_recorder.unavailable_reason}"
            )
        return [heap_text(records(include_self), heap_recorder.get_rate(), memstats())]


class AllocsProfile(HeapProfile):
    name = "allocs"
    description = "A sampling of all past memory allocations"
    default_sample_type = "alloc_space"

    def __init__(self) -> None:
        if not heap_recorder.sees_frees:
            self.description += (
                f" (unavailable: the native extension {heap_recorder.unavailable_reason})"
            )

    def snapshot(self, seconds: float | None = None, include_self: bool = False) -> Snapshot:
        if not heap_recorder.sees_frees:
            raise ProfileUnavailableError(
                f"the allocs profile needs pyprofiler's native extension, which "
                f"{heap_recorder.unavailable_reason}; tracemalloc cannot see freed allocations"
            )
        return _sampled_snapshot(self.default_sample_type, include_self)


def write_heap_profile(file: IO[bytes]) -> None:
    """Write the heap profile to `file`, as runtime/pprof.WriteHeapProfile."""
    registry.lookup("heap").write_to(file)


registry.register(HeapProfile())
registry.register(AllocsProfile())
