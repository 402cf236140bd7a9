"""The heap and allocs profiles, as Go's: sampled allocations, with both what was allocated and
what is still live, scaled back to unsampled estimates.

The sampling hook is the `_native` C extension. Where it was not built (no compiler at install
time), `heap` falls back to tracemalloc, which traces every block (exact, but costly: it is only
started by an explicit `set_mem_profile_rate`) and knows only what is live, so `allocs` answers
an error rather than a wrong number.
"""

from __future__ import annotations

import gc
import math
import os
import resource
import sys
import time
import tracemalloc
from typing import IO

import psutil

from pyprofiler import registry
from pyprofiler.errors import ProfileUnavailableError
from pyprofiler.frames import FrameNamer, modules_by_filename
from pyprofiler.native import native as _native
from pyprofiler.native import unavailable_reason
from pyprofiler.render_text import HeapRecord, heap_text
from pyprofiler.snapshot import Frame, Sample, Snapshot, ValueType

NATIVE = _native is not None
DEFAULT_RATE = 512 * 1024  # Go's MemProfileRate.
FALLBACK_FRAMES = 32

_OVERFLOW = Frame("[pyprofiler: heap table full]", "<pyprofiler>", 0, 0)
# Allocation sites that held no live memory when the table needed room: their counts, summed.
_RETIRED = Frame("[pyprofiler: retired allocation sites]", "<pyprofiler>", 0, 0)
_NO_PYTHON = Frame("[no Python frames]", "<pyprofiler>", 0, 0)

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
    if _native is not None:
        _native.set_rate(rate)
    elif rate > 0 and not tracemalloc.is_tracing():
        tracemalloc.start(FALLBACK_FRAMES)
    elif rate == 0 and tracemalloc.is_tracing():
        tracemalloc.stop()


def get_mem_profile_rate() -> int:
    if _native is not None:
        return _native.get_rate()
    return 1 if tracemalloc.is_tracing() else 0


def enable_default() -> None:
    """Turn sampling on at Go's default rate unless the program chose a rate itself."""
    if _native is not None and not _rate_chosen and _native.get_rate() == 0:
        _native.set_rate(DEFAULT_RATE)


def _scaled(count: int, nbytes: int, rate: int) -> tuple[int, int]:
    # An allocation of size s is sampled with probability 1 - exp(-s/rate) (Go's scaleHeapSample).
    if count <= 0 or nbytes <= 0 or rate <= 1:
        return count, nbytes
    scale = 1 / (1 - math.exp(-(nbytes / count) / rate))
    return round(count * scale), round(nbytes * scale)


def records() -> list[HeapRecord]:
    """The native sampler's buckets with named frames and raw counts."""
    if _native is None:
        return []
    namer = FrameNamer()
    result = []
    for frames, allocs, frees, alloc_bytes, free_bytes in _native.buckets():
        if frames is None:
            named: tuple[Frame, ...] = (_OVERFLOW,)
        elif frames == "retired":
            named = (_RETIRED,)
        elif not frames:
            named = (_NO_PYTHON,)
        else:
            named = namer.stack(frames)
        result.append(HeapRecord(named, allocs, frees, alloc_bytes, free_bytes))
    return result


def _native_snapshot(default_sample_type: str) -> Snapshot:
    rate = _native.get_rate()
    samples = []
    for record in records():
        alloc = _scaled(record.allocs, record.alloc_bytes, rate)
        inuse = _scaled(record.allocs - record.frees, record.alloc_bytes - record.free_bytes, rate)
        size = record.alloc_bytes // record.allocs if record.allocs else 0
        samples.append(
            Sample(record.frames, alloc + inuse, (), (("bytes", size, "bytes"),) if size else ())
        )
    retired = _native.stats()["retired_buckets"]
    comments = (
        (
            f"pyprofiler: {retired} allocation sites without live memory retired to make room; "
            f"their past allocations are under {_RETIRED.function}",
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


def _tracemalloc_snapshot() -> Snapshot:
    if not tracemalloc.is_tracing():
        raise ProfileUnavailableError(
            f"heap profiling is off: pyprofiler's native extension {unavailable_reason}, and its "
            "tracemalloc fallback starts only with pyprofiler.set_mem_profile_rate(1)"
        )
    modules = modules_by_filename()
    samples = []
    for stat in tracemalloc.take_snapshot().statistics("traceback"):
        # tracemalloc knows files and lines, not functions: frames are named by module.
        frames = tuple(
            Frame(modules.get(f.filename, f.filename), f.filename, 0, f.lineno)
            for f in stat.traceback
        )
        samples.append(Sample(frames, (stat.count, stat.size)))
    return Snapshot(
        sample_types=_SAMPLE_TYPES[2:],
        period_type=ValueType("space", "bytes"),
        period=1,
        time_nanos=time.time_ns(),
        samples=samples,
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
    if _native is not None:
        native = _native.stats()
        stats += [
            ("SampleRate", native["rate"]),
            ("Samples", native["samples"]),
            ("TrackedBlocks", native["tracked_blocks"]),
            ("DroppedBlocks", native["dropped_blocks"]),
            ("DroppedStacks", native["dropped_stacks"]),
            ("RetiredStacks", native["retired_buckets"]),
            ("TruncatedStacks", native["truncated_stacks"]),
            ("SamplerBytes", native["own_bytes"]),
            ("FreesSeen", native["frees_seen"]),
        ]
    else:
        traced, peak = tracemalloc.get_traced_memory() if tracemalloc.is_tracing() else (0, 0)
        stats += [
            ("Tracemalloc", tracemalloc.is_tracing()),
            ("TracedBytes", traced),
            ("TracedPeakBytes", peak),
            ("SamplerBytes", tracemalloc.get_tracemalloc_memory()),
        ]
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
    default_sample_type = "inuse_space"

    def __init__(self) -> None:
        if not NATIVE:
            self.description += (
                f" (tracemalloc fallback: the native extension {unavailable_reason}; start it with "
                "pyprofiler.set_mem_profile_rate(1))"
            )

    def count(self) -> int:
        if _native is not None:
            return max(_native.stats()["buckets"] - 1, 0)  # Bucket 0 collects overflow.
        return 0

    def snapshot(self, seconds: float | None = None) -> Snapshot:
        if _native is None:
            return _tracemalloc_snapshot()
        return _native_snapshot(self.default_sample_type)

    def text(self, debug: int) -> list[str]:
        if _native is None:
            raise ProfileUnavailableError(
                f"the debug=1 heap text needs pyprofiler's native extension, which "
                f"{unavailable_reason}"
            )
        return [heap_text(records(), _native.get_rate(), memstats())]


class AllocsProfile(HeapProfile):
    name = "allocs"
    description = "A sampling of all past memory allocations"
    default_sample_type = "alloc_space"

    def __init__(self) -> None:
        if not NATIVE:
            self.description += f" (unavailable: the native extension {unavailable_reason})"

    def snapshot(self, seconds: float | None = None) -> Snapshot:
        if _native is None:
            raise ProfileUnavailableError(
                f"the allocs profile needs pyprofiler's native extension, which "
                f"{unavailable_reason}; tracemalloc cannot see freed allocations"
            )
        return _native_snapshot(self.default_sample_type)


def write_heap_profile(file: IO[bytes]) -> None:
    """Write the heap profile to `file`, as runtime/pprof.WriteHeapProfile."""
    registry.lookup("heap").write_to(file)


def _after_fork_in_child() -> None:
    if _native is not None:
        _native.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)

registry.register(HeapProfile())
registry.register(AllocsProfile())
