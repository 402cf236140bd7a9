"""Go's count profiles: goroutine, threadcreate and custom profiles (pprof.NewProfile).

One implementation groups stacks and counts them; the three differ only in where the stacks
come from. Sample type `<name>/count`, period 1, as Go writes them.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator

from pyprofiler import creation, goroutines, registry
from pyprofiler.errors import PyprofilerError
from pyprofiler.frames import FrameNamer
from pyprofiler.render_text import GoroutineText, count_text, goroutine_dump
from pyprofiler.snapshot import Frame, Sample, Snapshot, ValueType
from pyprofiler.stalls import release_gradually

_THREADCREATE_FULL = Frame("[pyprofiler: threadcreate table full]", "<pyprofiler>", 0, 0)
# Go's name for an entry whose stack could not be recorded.
_LOST = Frame("pyprofiler.lostProfileEvent", "<pyprofiler>", 0, 0)

Labels = tuple  # ((key, value), ...)


class CountProfile(registry.Profile):
    supports_delta = True

    def counted_stacks(self) -> Iterable[tuple[tuple[Frame, ...], Labels, int]]:
        """(frames leaf first, labels, count) entries; equal entries are summed."""
        raise NotImplementedError

    def snapshot(self, seconds: float | None = None) -> Snapshot:
        counts: Counter = Counter()
        for frames, labels, count in self.counted_stacks():
            counts[(frames, labels)] += count
        value_type = ValueType(self.name, "count")
        samples = [Sample(frames, (count,), labels) for (frames, labels), count in counts.items()]
        release_gradually(counts)
        return Snapshot(
            sample_types=(value_type,),
            period_type=value_type,
            period=1,
            time_nanos=time.time_ns(),
            samples=samples,
        )

    def text(self, debug: int) -> Iterable[str]:
        counts: Counter = Counter()
        for frames, _, count in self.counted_stacks():
            counts[frames] += count
        groups = [(count, frames) for frames, count in counts.items()]
        return [count_text(self.name, sum(counts.values()), groups)]


class GoroutineProfile(CountProfile):
    name = "goroutine"
    pauses_gc = True  # Tens of thousands of tasks: see stalls.
    description = (
        "Stack traces of all current goroutines. Use debug=2 as a query parameter to export in "
        "the same format as an unrecovered panic."
    )

    def count(self) -> int:
        return (
            len(sys._current_frames())
            + len(goroutines.pending_tasks())
            + len(goroutines.suspended_greenlets())
        )

    def counted_stacks(self) -> Iterator[tuple[tuple[Frame, ...], Labels, int]]:
        namer = FrameNamer()
        for g in goroutines.goroutines():
            yield namer.stack(g.stack), (("kind", g.kind), (g.kind, g.name)), 1

    def text(self, debug: int) -> Iterable[str]:
        if debug < 2:
            return super().text(debug)
        return self._dump()

    def _dump(self) -> Iterator[str]:
        namer = FrameNamer()
        requester = creation.current_goroutine_id()
        # The goroutine that asked comes first, as in Go's dump.
        everything = sorted(goroutines.goroutines(), key=lambda g: g.id != requester)
        yield from goroutine_dump(
            GoroutineText(
                g.id,
                g.kind,
                g.name,
                g.state,
                g.age_seconds,
                namer.stack(g.stack),
                namer.stack(g.creation.stack) if g.creation else (),
                g.creation.creator_id if g.creation else 0,
            )
            for g in everything
        )
        release_gradually(everything)


class ThreadCreateProfile(CountProfile):
    name = "threadcreate"
    description = "Stack traces that led to the creation of new OS threads"

    def count(self) -> int:
        return sum(creation.threadcreate_counts.values()) + creation.threadcreate_dropped

    def counted_stacks(self) -> list[tuple[tuple[Frame, ...], Labels, int]]:
        namer = FrameNamer()
        entries = [
            (namer.stack(stack), (), count)
            for stack, count in list(creation.threadcreate_counts.items())
        ]
        if creation.threadcreate_dropped:
            entries.append(((_THREADCREATE_FULL,), (), creation.threadcreate_dropped))
        return entries


class CustomProfile(CountProfile):
    """A profile of the program's own: `add(value)` records the caller's stack for `value`."""

    supports_delta = False  # Go answers 400 for `?seconds` on custom profiles.

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._stacks: dict[Hashable, tuple] = {}

    def count(self) -> int:
        with self._lock:
            return len(self._stacks)

    def add(self, value: Hashable, skip: int = 0) -> None:
        """Record the stack of add's caller (`skip` more frames up) under `value`."""
        try:
            stack = creation.raw_stack(sys._getframe(1 + skip))
        except ValueError:  # skip goes past the whole stack
            stack = ()
        with self._lock:
            if value in self._stacks:
                raise PyprofilerError("pprof: Profile.Add of duplicate value")
            self._stacks[value] = stack

    def remove(self, value: Hashable) -> None:
        """Forget `value`; nothing happens if it was not added."""
        with self._lock:
            self._stacks.pop(value, None)

    def counted_stacks(self) -> list[tuple[tuple[Frame, ...], Labels, int]]:
        with self._lock:
            stacks = list(self._stacks.values())
        namer = FrameNamer()
        return [(namer.stack(stack) or (_LOST,), (), 1) for stack in stacks]


def new_profile(name: str) -> CustomProfile:
    """A new custom profile in the registry, as Go's pprof.NewProfile."""
    if not name:
        raise PyprofilerError("pprof: NewProfile with empty name")
    return registry.register(CustomProfile(name))


creation.install()
registry.register(GoroutineProfile())
registry.register(ThreadCreateProfile())
