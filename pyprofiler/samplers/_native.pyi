"""pyprofiler's C extension: sampling allocation hooks (heap, allocs), contention-reporting
locks (block, mutex) and a sampler thread that reads stacks without the GIL (CPU, wall).

Stacks are tuples of (code, line) pairs, leaf first.
"""

from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Sequence
from contextvars import Context, ContextVar
from types import CodeType, FrameType
from typing import Any, Final, Literal

_RawStack = tuple[tuple[CodeType, int], ...]
# (stack or None for the samples of a thread that no longer fit, ident, tid, alive, own,
# value_ns, count, the address of the label set in force or 0, the weight of the first tick
# (wall: the interval in which the thread's stack became this one)), in the order first met
_Record = tuple[_RawStack | None, int, int, bool, bool, int, int, int, int]
# (ident, tid, alive, own, cpu_ns) of a thread never seen on a CPU
_Unseen = tuple[int, int, bool, bool, int]

MAX_STACK_DEPTH: Final[int]
"""Frames kept of a sampled stack (Go's since 1.23); deeper stacks keep their innermost."""
SAMPLER_MAX_ENTRIES: Final[int]
"""(stack, thread) entries of a StackSampler window; then one overflow entry per thread."""
SAMPLER_MAX_THREADS: Final[int]
"""Threads with a label of their own in a StackSampler window; the rest share one."""
SAMPLER_MAX_HZ: Final[int]
"""The highest rate a StackSampler takes."""
LOCK_MAX_ENTRIES: Final[int]
"""Entries of each of the block and mutex tables; then one overflow entry."""
LOCK_MAX_DEPTH: Final[int]
"""Frames kept of a contention's stack."""
HEAP_MAX_DEPTH: Final[int]
"""Frames kept of a sampled allocation's stack, and of current_stack()."""
HEAP_MAX_BUCKETS: Final[int]
"""Distinct (stack, size class) buckets of the heap profile, the overflow bucket included."""

def set_rate(rate: int, /) -> int:
    """Set the mean bytes between sampled allocations (0 removes the hooks); returns the
    previous rate."""

def get_rate() -> int: ...
def buckets() -> list[tuple[_RawStack | None | Literal["retired"], int, int, int, int, int, int]]:
    """Sampled allocations as (frames, allocs, frees, alloc_bytes, free_bytes, labels, own):
    frames None for the overflow bucket, "retired" for the summed counts of retired buckets;
    labels the address of the label set in force where they were sampled, or 0; own 1 for
    what pyprofiler's own threads (set_own_threads) allocated."""

def stats() -> dict[str, int | str]:
    """The heap sampler's own counters."""

def reset() -> None:
    """Forget every sampled allocation; sampling goes on at the current rate."""

def frame_stack(frame: FrameType, /) -> _RawStack:
    """The stack from `frame` outwards, without creating frame objects."""

def current_stack(skip: int, /) -> _RawStack:
    """This thread's stack without its `skip` innermost frames, without creating frame
    objects."""

def suspended_line(
    gen: Generator[Any, Any, Any] | Coroutine[Any, Any, Any] | AsyncGenerator[Any, Any], /
) -> int | None:
    """The line a generator or coroutine is suspended at (None once finished), without creating
    its frame object."""

def stack_reads_available() -> bool:
    """Whether this process can copy its own stacks without the GIL (process_vm_readv)."""

def learn_contexts(empty: Context, full: Context, var: ContextVar[Any], value: object, /) -> bool:
    """Read `var` in each sampled thread's current context from now on (the labels in force):
    learnt from `empty` (a new Context) and `full` (where `var` is `value` among many other
    variables). False, and nothing read, if the layout is not the one expected."""

def thread_labels() -> dict[int, int]:
    """{ident: address of the learnt variable's value in its current context, or 0} of every
    thread of the interpreter."""

def line_of(code: CodeType, offset: int, /) -> int:
    """The line at a bytecode offset, as the sampler reads the line table."""

def set_own_threads(threads: Sequence[tuple[int, int]], /) -> None:
    """pyprofiler's own threads as (ident, kernel tid) pairs, which StackSamplers leave out
    unless told otherwise."""

def set_lock_profiling(
    block_rate_ns: int,
    mutex_fraction: int,
    label_lock: Callable[[object], str | None] | None,
    /,
) -> None:
    """What Lock and RLock record, and what labels a new entry (label_lock(lock), or None not to
    record the event)."""

def lock_contentions(
    name: Literal["block", "mutex"], /
) -> list[tuple[_RawStack, str, float, float, int]]:
    """(stack, label, count, delay_ns, labels) of a table; the overflow entry has no frames and
    the label "". labels: the address of the label set in force at the event, or 0."""

def clear_lock_contentions() -> None: ...
def after_fork_in_child() -> None:
    """Reset every part in a forked child: heap tables, lock waiters, the random state."""

class Lock:
    """A threading.Lock that reports contention to the block and mutex profiles."""

    def __init__(self) -> None: ...
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool: ...
    def acquire_lock(self, blocking: bool = True, timeout: float = -1) -> bool: ...
    def release(self) -> None: ...
    def release_lock(self) -> None: ...
    def locked(self) -> bool: ...
    def locked_lock(self) -> bool: ...
    def __enter__(self, blocking: bool = True, timeout: float = -1) -> bool: ...
    def __exit__(self, *exc_info: object) -> None: ...
    def _at_fork_reinit(self) -> None: ...

class RLock:
    """A threading.RLock that reports contention to the block and mutex profiles."""

    def __init__(self) -> None: ...
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool: ...
    def release(self) -> None: ...
    def __enter__(self, blocking: bool = True, timeout: float = -1) -> bool: ...
    def __exit__(self, *exc_info: object) -> None: ...
    def _is_owned(self) -> bool: ...
    def _recursion_count(self) -> int: ...
    def _release_save(self) -> tuple[int, int]:
        """Condition.wait: give the lock up entirely; returns (count, owner)."""

    def _acquire_restore(self, state: tuple[int, int], /) -> None:
        """Condition.wait: take the lock back as _release_save() gave it up."""

    def _at_fork_reinit(self) -> None: ...

class StackSampler:
    """A native thread sampling every thread's stack without the GIL, weighted by the CPU used
    (wall=False) or by wall time (wall=True)."""

    def __init__(self, hz: int, wall: bool) -> None: ...
    def start(self) -> None:
        """Take the first reading and start the sampler thread."""

    def cut(self) -> tuple[list[_Record], list[_Unseen], dict[str, int]] | None:
        """The window since start() or the previous cut() as (records, unseen, stats); sampling
        goes on into a new window. None once the sampler has ended on its own. stats["reading_ns"]
        is when the window's last reading was taken (time.monotonic_ns())."""

    def expire_after(self, seconds: float, /) -> None:
        """End on its own after `seconds`, discarding what was recorded since the last cut(),
        unless cut() or stop() comes first."""

    def stop(
        self,
    ) -> tuple[list[_Record], list[_Unseen], int, str | None, dict[str, int]]:
        """Take a final reading, stop the thread and return (records, unseen, own_cpu_ns, error,
        stats)."""

    def include_own_threads(self, include: bool, /) -> None:
        """Whether pyprofiler's own threads (set_own_threads) are sampled from now on."""
