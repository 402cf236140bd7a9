"""The pivot between samplers and renderers: a finished profile as plain Python values.

Samplers produce a Snapshot; the protobuf encoder, the text renderers and the HTTP layer only
ever see Snapshots, never sampler state.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

from pyprofiler.stalls import release_gradually


class Frame(NamedTuple):
    """One stack frame: a function (name, file, first line) and the line being executed."""

    function: str
    filename: str
    start_line: int
    line: int


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
        totals: dict = {}
        for sign, snapshot in ((1, self), (-1, base)):
            for s in snapshot.samples:
                key = (s.frames, s.labels, s.num_labels)
                values = totals.get(key) or [0] * len(s.values)
                totals[key] = [v + sign * w for v, w in zip(values, s.values)]
        samples = [
            Sample(frames, tuple(values), labels, num_labels)
            for (frames, labels, num_labels), values in totals.items()
            if any(values)
        ]
        release_gradually(totals)
        return replace(self, samples=samples, duration_nanos=self.time_nanos - base.time_nanos)

    def total(self, sample_type: str) -> int:
        """Sum of one value column over all samples."""
        index = [t.type for t in self.sample_types].index(sample_type)
        return sum(s.values[index] for s in self.samples)
