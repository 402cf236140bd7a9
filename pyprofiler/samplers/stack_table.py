"""Bounded aggregation of sampled Python stacks, shared by the CPU and wall samplers.

Frames are interned as small integers and stacks as tuples of them, so a repeated stack costs one
dict lookup per frame and nothing more. Both tables have caps; what no longer fits is counted
under a visible `[pyprofiler: ... table full]` frame instead of being lost.
"""

from __future__ import annotations

import types
from typing import Union

from pyprofiler.samplers import stacks
from pyprofiler.samplers.frames import FrameNamer
from pyprofiler.samplers.limits import SAMPLER_MAX_ENTRIES
from pyprofiler.snapshot import Frame, Sample, table_full

# Memory bound: at most MAX_STACKS stacks of MAX_STACK_DEPTH 8-byte references (about 10 MB),
# plus MAX_FRAMES interned (code, line) pairs (about 10 MB); typical services use well under 1 MB.
MAX_STACKS = SAMPLER_MAX_ENTRIES
MAX_FRAMES = 50_000

# The frames that samples which no longer fit are counted under.
STACK_TABLE_FULL = table_full("stack")
FRAME_TABLE_FULL = table_full("frame")

_STACK_TABLE_FULL = 0
_FRAME_TABLE_FULL = 1
_RESERVED = [STACK_TABLE_FULL, FRAME_TABLE_FULL]

_FrameEntry = Union[Frame, tuple[types.CodeType, int]]


class StackTable:
    """Counts (stack, thread name) pairs, each with a sample count and a summed value."""

    def __init__(self) -> None:
        self._frame_ids: dict[tuple[types.CodeType, int], int] = {}
        self._frames: list[_FrameEntry] = list(_RESERVED)
        self._stacks: dict[tuple[tuple[int, ...], str], list[int]] = {}
        self.dropped_stacks = 0
        self.dropped_frames = 0

    def _intern(self, key: tuple[types.CodeType, int]) -> int:
        if len(self._frames) >= MAX_FRAMES:
            self.dropped_frames += 1
            return _FRAME_TABLE_FULL
        frame_id = self._frame_ids[key] = len(self._frames)
        self._frames.append(key)
        return frame_id

    def add(self, frame: types.FrameType, thread_name: str, value: int) -> None:
        raw = stacks.frame_stack(frame)
        frame_ids = self._frame_ids
        ids = tuple([frame_ids.get(key) or self._intern(key) for key in raw])
        stack_key = (ids, thread_name)
        entry = self._stacks.get(stack_key)
        if entry is None:
            if len(self._stacks) >= MAX_STACKS:
                self.dropped_stacks += 1
                stack_key = ((_STACK_TABLE_FULL,), thread_name)
            entry = self._stacks.setdefault(stack_key, [0, 0])
        entry[0] += 1
        entry[1] += value

    def samples(self) -> list[Sample]:
        """One Sample per (stack, thread): values (count, summed value), label `thread`."""
        namer = FrameNamer()
        frames = [
            entry if isinstance(entry, Frame) else namer.frame(*entry) for entry in self._frames
        ]
        return [
            Sample(tuple(frames[i] for i in ids), (count, value), (("thread", thread),))
            for (ids, thread), (count, value) in self._stacks.items()
        ]
