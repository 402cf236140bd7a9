"""The one os.register_at_fork entry of pyprofiler's Python side: in a forked child only the
forking thread exists, so each part forgets the threads, locks and state of the parent's other
threads here, in an order that has every part's locks usable before anything runs."""

from __future__ import annotations

import os

from pyprofiler import cpu, guards, periodic, server, stalls, turns
from pyprofiler.samplers import calls, creation, own_locks, stack_python, trace
from pyprofiler.samplers.native import native


def _after_fork_in_child() -> None:
    own_locks.after_fork_in_child()  # First: every part below may take its locks.
    if native is not None:
        native.after_fork_in_child()  # The C parts' tables and locks.
    stack_python.after_fork_in_child()
    calls.after_fork_in_child()
    trace.after_fork_in_child()
    creation.after_fork_in_child()
    stalls.after_fork_in_child()
    turns.after_fork_in_child()
    guards.after_fork_in_child()
    cpu.after_fork_in_child()
    # Last, as they start threads of their own in the child: the periodic writer, then the
    # server (which joins its parent's group or takes over its port).
    periodic.after_fork_in_child()
    server.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
