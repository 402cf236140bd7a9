"""Go's count profiles: goroutine, threadcreate and custom profiles (pprof.NewProfile).

One implementation groups stacks and counts them; the three differ only in where the stacks
come from. Sample type `<name>/count`, period 1, as Go writes them.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator
from typing import NamedTuple

from pyprofiler import registry
from pyprofiler.errors import PyprofilerError
from pyprofiler.render_text import count_text, goroutine_dump
from pyprofiler.samplers import creation, goroutines, stacks
from pyprofiler.samplers.frames import FrameNamer
from pyprofiler.samplers.own_locks import OwnLock
from pyprofiler.snapshot import Frame, Sample, Snapshot, ValueType, table_full
from pyprofiler.stalls import release_gradually

_THREADCREATE_FULL = table_full("threadcreate")
# Go's name for an entry whose stack could not be recorded.
_LOST = Frame("pyprofiler.lostProfileEvent", "<pyprofiler>", 0, 0)

Labels = tuple  # ((key, value), ...)


class GoroutineText(NamedTuple):
    """What the full dump shows of one thread or task."""

    id: int
    kind: str
    name: str
    state: str
    age_seconds: float | None
    frames: tuple[Frame, ...]
    created_by: tuple[Frame, ...]
    creator_id: int


class CountProfile(registry.Profile):
    supports_delta = True

    def counted_stacks(
        self, include_self: bool = False
    ) -> Iterable[tuple[tuple[Frame, ...], Labels, int]]:
        """(frames leaf first, labels, count) entries; equal entries are summed. pyprofiler's own
        threads are left out unless `include_self`."""
        raise NotImplementedError

    def snapshot(self, seconds: float | None = None, include_self: bool = False) -> Snapshot:
        counts: Counter = Counter()
        for frames, labels, count in self.counted_stacks(include_self):
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

    # Labels of the profile's own that the debug=1 text leaves out (it shows the program's).
    own_label_keys: frozenset = frozenset()

    def text(self, debug: int, include_self: bool = False) -> Iterable[str]:
        counts: Counter = Counter()
        for frames, labels, count in self.counted_stacks(include_self):
            shown = tuple(pair for pair in labels if pair[0] not in self.own_label_keys)
            counts[(frames, shown)] += count
        groups = [(count, frames, labels) for (frames, labels), count in counts.items()]
        return [count_text(self.name, sum(counts.values()), groups)]


class GoroutineProfile(CountProfile):
    name = "goroutine"
    pauses_gc = True  # Tens of thousands of tasks: see stalls.
    sees_own_threads = True
    description = (
        "Stack traces of all current goroutines. Use debug=2 as a query parameter to export in "
        "the same format as an unrecovered panic."
    )

    own_label_keys = frozenset({"kind", "thread", "task", "greenlet"})

    def count(self) -> int:
        return (
            goroutines.thread_count()
            + len(goroutines.pending_tasks())
            + len(goroutines.suspended_greenlets())
        )

    def counted_stacks(
        self, include_self: bool = False
    ) -> Iterator[tuple[tuple[Frame, ...], Labels, int]]:
        namer = FrameNamer()
        for g in goroutines.goroutines(include_self):
            yield namer.stack(g.stack), (("kind", g.kind), (g.kind, g.name)) + g.labels, 1

    def text(self, debug: int, include_self: bool = False) -> Iterable[str]:
        if debug < 2:
            return super().text(debug, include_self)
        return self._dump(include_self)

    def _dump(self, include_self: bool) -> Iterator[str]:
        namer = FrameNamer()
        requester = creation.current_goroutine_id()
        # The goroutine that asked comes first, as in Go's dump.
        everything = sorted(goroutines.goroutines(include_self), key=lambda g: g.id != requester)
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
    sees_own_threads = True

    def count(self) -> int:
        return sum(count for _, count in creation.threadcreate_entries(include_self=False))

    def counted_stacks(
        self, include_self: bool = False
    ) -> list[tuple[tuple[Frame, ...], Labels, int]]:
        namer = FrameNamer()
        return [
            (namer.stack(stack) if stack is not None else (_THREADCREATE_FULL,), (), count)
            for stack, count in creation.threadcreate_entries(include_self)
        ]


class CustomProfile(CountProfile):
    """A profile of the program's own: `add(value)` records the caller's stack for `value`."""

    supports_delta = False  # Go answers 400 for `?seconds` on custom profiles.

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = OwnLock()
        self._stacks: dict[Hashable, tuple] = {}

    def count(self) -> int:
        with self._lock:
            return len(self._stacks)

    def add(self, value: Hashable, skip: int = 0) -> None:
        """Record the stack of add's caller (`skip` more frames up) under `value`."""
        try:
            stack = stacks.walk(sys._getframe(1 + skip), creation.MAX_CREATION_FRAMES)
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

    def counted_stacks(
        self, include_self: bool = False
    ) -> list[tuple[tuple[Frame, ...], Labels, int]]:
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
