"""The pivot between samplers and renderers: a finished profile as plain Python values.

Samplers produce a Snapshot; the protobuf encoder, the text renderers and the HTTP layer only
ever see Snapshots, never sampler state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


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

    def total(self, sample_type: str) -> int:
        """Sum of one value column over all samples."""
        index = [t.type for t in self.sample_types].index(sample_type)
        return sum(s.values[index] for s in self.samples)
