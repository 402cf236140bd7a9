"""Label sets: what `pyprofiler.labels()` puts in force, as the recorders read it.

The labels in force are one `LabelSet` held by one `ContextVar`, so that they belong to the
running context (a thread, or the asyncio task that runs on it), not to the thread. Sets are
interned and immortal: each distinct set exists once and is never freed, so that the native
sampler, which reads a thread's context without the GIL (sampler.c), can record a set by its
address alone and have it named when the profile is built. At most MAX_LABEL_SETS sets are
interned; beyond that new sets work as usual for the program, and the samples taken under them
carry the OVERFLOW label instead, counted.
"""

from __future__ import annotations

import contextvars
import threading

from pyprofiler.samplers.native import native

# Bounds, stated in docs/labels.md.
MAX_LABELS = 16  # per set
MAX_LABEL_CHARS = 200  # per key and per value; longer ones are cut and end with TRUNCATED
MAX_LABEL_SETS = 4096  # distinct sets the samplers can tell apart
TRUNCATED = "…"
# Keys that pyprofiler's own labels use.
RESERVED_KEYS = frozenset({"thread", "pid"})
# The label of samples taken under a set that did not fit the table.
OVERFLOW = ("pyprofiler", "label sets full")


class LabelSet:
    """An immutable set of (key, value) string pairs, sorted by key."""

    __slots__ = ("items", "interned", "_children")

    def __init__(self, items: tuple[tuple[str, str], ...], interned: bool) -> None:
        self.items = items
        self.interned = interned
        # ((key, value), ...) as a labels block gave them -> the set it makes under this one.
        self._children: dict[tuple, LabelSet] = {}

    def as_dict(self) -> dict[str, str]:
        return dict(self.items)

    def pprof_labels(self) -> tuple[tuple[str, str], ...]:
        """The pairs a sample carries: the set's own, or OVERFLOW for a set that was not
        interned (the native sampler cannot name it)."""
        return self.items if self.interned else (OVERFLOW,)


_lock = threading.Lock()
_interned: dict[tuple[tuple[str, str], ...], LabelSet] = {}
_by_address: dict[int, LabelSet] = {}
_overflowed = 0
# Entries of the sets' _children caches, all sets together.
MAX_CACHED_CHILDREN = 4 * MAX_LABEL_SETS
_cached = 0


def _intern(items: tuple[tuple[str, str], ...]) -> LabelSet:
    global _overflowed
    with _lock:
        found = _interned.get(items)
        if found is not None:
            return found
        if len(_interned) >= MAX_LABEL_SETS:
            _overflowed += 1
            return LabelSet(items, interned=False)
        made = LabelSet(items, interned=True)
        _interned[items] = made
        _by_address[id(made)] = made
        return made


EMPTY = _intern(())
current: contextvars.ContextVar[LabelSet] = contextvars.ContextVar("pyprofiler_labels")


def _checked(key: object, value: object) -> tuple[str, str]:
    if type(key) is not str:
        raise TypeError(f"label key {key!r} must be a str, not {type(key).__name__}")
    if not isinstance(value, str):
        raise TypeError(f"label {key!r} must have a str value, not {type(value).__name__}")
    if key in RESERVED_KEYS:
        raise ValueError(f"label key {key!r} is pyprofiler's own; choose another name")
    if not key:
        raise ValueError("a label key must not be empty")
    return _cut(key), _cut(str(value))


def _cut(text: str) -> str:
    if len(text) <= MAX_LABEL_CHARS:
        return text
    return text[: MAX_LABEL_CHARS - 1] + TRUNCATED


def child(parent: LabelSet, pairs: tuple) -> LabelSet:
    """`parent` with `pairs` ((key, value), ...) added, overriding its own keys."""
    global _cached
    try:
        return parent._children[pairs]
    except (KeyError, TypeError):  # New, or an unhashable value, which _checked names.
        pass
    merged = dict(parent.items)
    for key, value in pairs:
        key, value = _checked(key, value)
        merged[key] = value
    if len(merged) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels are in force at once, not {len(merged)}")
    made = _intern(tuple(sorted(merged.items())))
    if made.interned and _cached < MAX_CACHED_CHILDREN:
        parent._children[pairs] = made
        _cached += 1
    return made


def resolve(address: int) -> tuple[tuple[str, str], ...]:
    """The pairs of the set at `address` as the native sampler read it: () for none, OVERFLOW
    for one that is not interned (or a reading that met a changing context)."""
    if address == 0:
        return ()
    found = _by_address.get(address)
    return found.items if found is not None else (OVERFLOW,)


def _teach_native_sampler() -> bool:
    """Let the native sampler read `current` in each thread's context (contextread.h)."""
    if native is None:
        return False
    full = contextvars.Context()
    others = [contextvars.ContextVar(f"pyprofiler_probe_{i}") for i in range(40)]

    def fill() -> None:
        for var in others:
            var.set(None)
        current.set(EMPTY)

    full.run(fill)
    return native.learn_contexts(contextvars.Context(), full, current, EMPTY)


# Whether the native sampler reads labels (False: its samples carry none).
native_reads = _teach_native_sampler()


def of_threads() -> dict[int, tuple[tuple[str, str], ...]]:
    """The labels in force on each thread now, by ident (with the native extension; else none)."""
    if not native_reads:
        return {}
    return {ident: resolve(address) for ident, address in native.thread_labels().items()}


def of_task(task: object) -> tuple[tuple[str, str], ...]:
    """The labels of an asyncio task's own context: 3.12+ says it; before, the context is where
    the task is woken from (its awaited future's callback), or Python's Task keeps it."""
    context = None
    get_context = getattr(task, "get_context", None)
    if get_context is not None:
        context = get_context()
    else:
        context = getattr(task, "_context", None)
    if context is None:
        waiter = getattr(task, "_fut_waiter", None)
        for callback, callback_context in getattr(waiter, "_callbacks", None) or ():
            owner = getattr(callback, "__self__", None)
            if owner is task or type(callback).__name__ == "TaskWakeupMethWrapper":
                context = callback_context
                break
    if not isinstance(context, contextvars.Context):
        return ()
    found = context.get(current)
    return found.pprof_labels() if found is not None else ()


def in_force() -> LabelSet:
    return current.get(EMPTY)


def overflowed() -> int:
    """How many sets did not fit the table."""
    return _overflowed
