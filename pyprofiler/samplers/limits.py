"""The bounds that the native extension and the Python side share, defined once here."""

from __future__ import annotations

MAX_STACK_DEPTH = 128  # Go's stack depth since 1.23; deeper stacks keep their innermost frames.
SAMPLER_MAX_ENTRIES = 10_000  # (stack, thread) entries of a CPU or wall window.
SAMPLER_MAX_HZ = 1000  # The highest CPU and wall sampling rate.
LOCK_MAX_ENTRIES = 4096  # Entries of each of the block and mutex tables.
LOCK_MAX_DEPTH = 32  # Frames kept of a contention's stack (and of a creation stack).
