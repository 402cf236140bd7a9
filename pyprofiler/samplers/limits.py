"""The bounds that the native extension and the Python side share. The extension defines them
once (its limits.h) and exports them; the values below stand in only where it is not built."""

from __future__ import annotations

from pyprofiler.samplers.native import native

MAX_STACK_DEPTH: int  # Go's stack depth since 1.23; deeper stacks keep their innermost frames.
SAMPLER_MAX_ENTRIES: int  # (stack, thread) entries of a CPU or wall window.
SAMPLER_MAX_HZ: int  # The highest CPU and wall sampling rate.
LOCK_MAX_ENTRIES: int  # Entries of each of the block and mutex tables.
LOCK_MAX_DEPTH: int  # Frames kept of a contention's stack (and of a creation stack).

if native is not None:
    MAX_STACK_DEPTH = native.MAX_STACK_DEPTH
    SAMPLER_MAX_ENTRIES = native.SAMPLER_MAX_ENTRIES
    SAMPLER_MAX_HZ = native.SAMPLER_MAX_HZ
    LOCK_MAX_ENTRIES = native.LOCK_MAX_ENTRIES
    LOCK_MAX_DEPTH = native.LOCK_MAX_DEPTH
else:
    MAX_STACK_DEPTH = 128
    SAMPLER_MAX_ENTRIES = 10_000
    SAMPLER_MAX_HZ = 1000
    LOCK_MAX_ENTRIES = 4096
    LOCK_MAX_DEPTH = 32
