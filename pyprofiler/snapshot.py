"""The pivot between samplers and renderers: a finished profile as plain Python values.

Samplers produce a Snapshot; the protobuf encoder, the text renderers and the HTTP layer only
ever see Snapshots, never sampler state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from pyprofiler import stalls


def escaped(text: str) -> str:
    """`text` as UTF-8 can carry it. Names may hold lone surrogates (a file name's undecodable
    byte, a name built at run time): each becomes a backslash escape, as `\\udce9`."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class Frame(NamedTuple):
    """One stack frame: a function (name, file, first line) and the line being executed."""

    function: str
    filename: str
    start_line: int
    line: int


def placeholder(what: str) -> Frame:
    """A frame that stands for what pyprofiler could not record, named `[pyprofiler: what]` so
    that a profile shows the loss where it happened (a full table, a dropped site)."""
    return Frame(f"[pyprofiler: {what}]", "<pyprofiler>", 0, 0)


def table_full(table: str) -> Frame:
    """The frame that what no longer fitted in `table` is counted under."""
    return placeholder(f"{table} table full")


class ValueType(NamedTuple):
    type: str
    unit: str


class Sample(NamedTuple):
    frames: tuple[Frame, ...]  # Leaf first, as in profile.proto.
    values: tuple[int, ...]  # One per Snapshot.sample_types entry.
    labels: tuple[tuple[str, str], ...] = ()
    num_labels: tuple[tuple[str, int, str], ...] = ()  # (key, value, unit)


@dataclass
class Snapshot:
    sample_types: tuple[ValueType, ...]
    period_type: ValueType
    period: int
    time_nanos: int
    duration_nanos: int = 0
    default_sample_type: str | None = None
    samples: list = field(default_factory=list)
    comments: tuple[str, ...] = ()

    def subtract(self, base: Snapshot) -> Snapshot:
        """What changed since `base`, as pprof's merge of self and base scaled by -1: values
        of identical samples subtracted, all-zero samples dropped."""
        samples = _summed(((1, self), (-1, base)))
        return replace(self, samples=samples, duration_nanos=self.time_nanos - base.time_nanos)

    def with_labels(self, labels: tuple[tuple[str, str], ...]) -> Snapshot:
        """The same profile with `labels` added to every sample (e.g. the process's pid)."""
        samples = [s._replace(labels=labels + s.labels) for s in self.samples]
        return replace(self, samples=samples)

    def without_threads(self, prefix: str) -> Snapshot:
        """The same profile without the samples whose `thread` label starts with `prefix`."""
        samples = [
            s
            for s in self.samples
            if not any(key == "thread" and value.startswith(prefix) for key, value in s.labels)
        ]
        return replace(self, samples=samples)

    def total(self, sample_type: str) -> int:
        """Sum of one value column over all samples."""
        index = [t.type for t in self.sample_types].index(sample_type)
        return sum(s.values[index] for s in self.samples)


def merge(snapshots: list[Snapshot]) -> Snapshot:
    """One profile of several of the same type, as pprof's merge: values of identical samples
    added. Consecutive windows of one process add up to the window that spans them; profiles of
    several processes (with a label telling them apart) add up to the service."""
    if not snapshots:
        raise ValueError("nothing to merge")
    first = min(snapshots, key=lambda s: s.time_nanos)
    end = max(s.time_nanos + s.duration_nanos for s in snapshots)
    comments: dict[str, None] = {}
    for snapshot in snapshots:
        comments.update(dict.fromkeys(snapshot.comments))
    return replace(
        first,
        samples=_summed((1, s) for s in snapshots),
        duration_nanos=end - first.time_nanos,
        comments=tuple(comments),
    )


def _summed(signed: Iterable[tuple[int, Snapshot]]) -> list[Sample]:
    totals: dict = {}
    for sign, snapshot in signed:
        for s in snapshot.samples:
            key = (s.frames, s.labels, s.num_labels)
            values = totals.get(key) or [0] * len(s.values)
            totals[key] = [v + sign * w for v, w in zip(values, s.values)]
    samples = [
        Sample(frames, tuple(values), labels, num_labels)
        for (frames, labels, num_labels), values in totals.items()
        if any(values)
    ]
    stalls.release_gradually(totals)
    return samples
