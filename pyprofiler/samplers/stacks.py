"""The one reader of raw stacks: ((code, line), ...) pairs, leaf first, which keep their code
objects alive and are named (samplers/frames.py) only when a profile is built.

`walk` follows frame objects, as any Python can. `frame_stack` and `current_stack` are the
readers of the hot paths (the Python sampler's ticks, contention events): with the native
extension they read the interpreter's frames without creating frame objects (3.11+).
"""

from __future__ import annotations

import sys
import types

from pyprofiler.samplers.limits import MAX_STACK_DEPTH
from pyprofiler.samplers.native import native

RawStack = tuple  # ((code, line), ...), leaf first


def walk(frame: types.FrameType | None, limit: int = MAX_STACK_DEPTH) -> RawStack:
    """The stack from `frame` outwards, at most `limit` frames, read from frame objects."""
    stack = []
    while frame is not None and len(stack) < limit:
        stack.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back
    return tuple(stack)


def frame_stack(frame: types.FrameType) -> RawStack:
    """The stack from `frame` outwards, at most MAX_STACK_DEPTH frames."""
    if native is not None:
        return native.frame_stack(frame)
    return walk(frame)


def current_stack(skip: int, limit: int) -> RawStack:
    """The calling thread's stack without its `skip` innermost frames (the caller's own frame
    is skip 0), at most `limit` frames."""
    if native is not None:
        return native.current_stack(skip + 1)[:limit]
    return walk(sys._getframe(skip + 1), limit)
