"""Profiler labels, as Go's `pprof.Do(ctx, pprof.Labels(...), f)`: which request, route, tenant
or job each sample belongs to.

    with pyprofiler.labels(route="/api/users/<id>", tenant="acme"):
        handle()

    @pyprofiler.labels(job="nightly")
    async def run_job(): ...

Labels belong to the running context (`contextvars`), so an asyncio task keeps its own however
tasks interleave on a loop, a task inherits its creator's, and so does a thread started inside a
block (and a call submitted to an executor, as it runs). Every profile reads them: CPU and wall
samples, goroutines, heap and allocs samples, block and mutex events carry them as pprof string
labels, for `go tool pprof -tags`, `-tagfocus`, `-tagignore`, `-tagroot` and `-tagleaf`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from pyprofiler.samplers import labelsets

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["labels", "get_labels"]

_current = labelsets.current
_child = labelsets.child
_EMPTY = labelsets.EMPTY


class labels:  # noqa: N801 - used as a function, as contextlib's context managers are
    """A block, or a function, whose samples carry these labels (keys and values are `str`):
    added to the labels in force outside it, overriding those of the same keys, until it ends.

    One object is one block at a time, as `with pyprofiler.labels(...):` makes it; as a
    decorator it puts the labels in force afresh for each call.
    """

    __slots__ = ("_pairs", "_tokens")

    def __init__(self, **labels: str) -> None:
        self._pairs = tuple(labels.items())
        self._tokens: list = []

    def __enter__(self) -> None:
        # Written for speed (a block is entered per request, or per chunk of work): the set
        # made from these labels, as labelsets.child() caches it, looked up without a call.
        parent = _current.get(_EMPTY)
        try:
            made = parent._children.get(self._pairs) or _child(parent, self._pairs)
        except TypeError:  # An unhashable value: child() names the key.
            made = _child(parent, self._pairs)
        self._tokens.append(_current.set(made))

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        _current.reset(self._tokens.pop())

    def __call__(self, function: F) -> F:
        pairs = self._pairs
        _child(_EMPTY, pairs)  # A bad label fails here, not at each call.
        current, empty, child = _current, _EMPTY, _child
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_labelled_coroutine(*args: Any, **kwargs: Any) -> Any:
                token = current.set(child(current.get(empty), pairs))
                try:
                    return await function(*args, **kwargs)
                finally:
                    current.reset(token)

            return run_labelled_coroutine  # type: ignore[return-value]

        @functools.wraps(function)
        def run_labelled(*args: Any, **kwargs: Any) -> Any:
            token = current.set(child(current.get(empty), pairs))
            try:
                return function(*args, **kwargs)
            finally:
                current.reset(token)

        return run_labelled  # type: ignore[return-value]


def get_labels() -> dict[str, str]:
    """The labels in force here."""
    return labelsets.in_force().as_dict()
