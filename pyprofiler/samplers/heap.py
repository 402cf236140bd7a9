"""What records allocations for the heap and allocs profiles: the native extension's sampling
allocator hooks (heap_native.py) or, where it is not built, tracemalloc (heap_tracemalloc.py),
behind one protocol. samplers/__init__.py chooses which."""

from __future__ import annotations

from typing import NamedTuple, Protocol

from pyprofiler.snapshot import Frame


class HeapRecord(NamedTuple):
    """One (stack, size) bucket with raw, unscaled sample counts."""

    frames: tuple[Frame, ...]
    allocs: int
    frees: int
    alloc_bytes: int
    free_bytes: int
    labels: tuple[tuple[str, str], ...] = ()  # The labels in force where it was sampled.
    own: bool = False  # Allocated by one of pyprofiler's own threads.


class HeapBackend(Protocol):
    sees_frees: bool  # False: only what is live now is known (tracemalloc).
    unavailable_reason: str  # Why the native hooks are not used ("" where they are).

    def set_rate(self, rate: int) -> None:
        """Sample one allocation per `rate` bytes on average; 0 stops recording."""

    def get_rate(self) -> int: ...

    def start_by_default(self, rate: int) -> None:
        """Record at `rate` unless recording was chosen otherwise, where that costs little."""

    def recording(self) -> bool: ...

    def records(self) -> list[HeapRecord]:
        """What was recorded, frames named; without frees seen, allocs and bytes live now."""

    def record_count(self) -> int:
        """How many records records() would return, cheaply."""

    def retired(self) -> int:
        """Records retired to make room (their counts summed under one record)."""

    def stats(self) -> list[tuple[str, object]]:
        """The recorder's own counters, for the text form's MemStats block."""
