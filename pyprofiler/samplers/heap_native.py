"""The heap recorder of the native extension (its heap.c): allocator hooks that sample one
allocation per `rate` bytes on average and see it freed."""

from __future__ import annotations

from pyprofiler.samplers import labelsets
from pyprofiler.samplers.frames import FrameNamer
from pyprofiler.samplers.heap import HeapRecord
from pyprofiler.samplers.native import native
from pyprofiler.snapshot import Frame, placeholder, table_full

OVERFLOW = table_full("heap")
# Allocation sites that held no live memory when the table needed room: their counts, summed.
RETIRED = placeholder("retired allocation sites")
NO_PYTHON = Frame("[no Python frames]", "<pyprofiler>", 0, 0)


class NativeHeap:
    sees_frees = True
    unavailable_reason = ""

    def set_rate(self, rate: int) -> None:
        native.set_rate(rate)

    def get_rate(self) -> int:
        return native.get_rate()

    def start_by_default(self, rate: int) -> None:
        if native.get_rate() == 0:
            native.set_rate(rate)

    def recording(self) -> bool:
        return True

    def records(self) -> list[HeapRecord]:
        namer = FrameNamer()
        result = []
        for frames, allocs, frees, alloc_bytes, free_bytes, label_set, own in native.buckets():
            if frames is None:
                named: tuple[Frame, ...] = (OVERFLOW,)
            elif frames == "retired":
                named = (RETIRED,)
            elif not frames:
                named = (NO_PYTHON,)
            else:
                named = namer.stack(frames)
            labels = labelsets.resolve(label_set)
            record = HeapRecord(named, allocs, frees, alloc_bytes, free_bytes, labels, bool(own))
            result.append(record)
        return result

    def record_count(self) -> int:
        return max(native.stats()["buckets"] - 1, 0)  # Bucket 0 collects overflow.

    def retired(self) -> int:
        return native.stats()["retired_buckets"]

    def stats(self) -> list[tuple[str, object]]:
        stats = native.stats()
        return [
            ("SampleRate", stats["rate"]),
            ("Samples", stats["samples"]),
            ("TrackedBlocks", stats["tracked_blocks"]),
            ("DroppedBlocks", stats["dropped_blocks"]),
            ("DroppedStacks", stats["dropped_stacks"]),
            ("RetiredStacks", stats["retired_buckets"]),
            ("TruncatedStacks", stats["truncated_stacks"]),
            ("SamplerBytes", stats["own_bytes"]),
            ("FreesSeen", stats["frees_seen"]),
        ]
