"""The native stack sampling backend: the extension's sampler thread (its sampler.c), which
copies stacks without the GIL and hands them over as raw records at cut() and stop()."""

from __future__ import annotations

import atexit
import logging
import threading

from pyprofiler.samplers import creation, labelsets
from pyprofiler.samplers.frames import FrameNamer
from pyprofiler.samplers.native import native
from pyprofiler.snapshot import Sample, placeholder, table_full

log = logging.getLogger("pyprofiler")

# Where the CPU of a thread goes that used CPU in the window but was never on one at a sampling
# instant (it lived or computed for less than a period or two): not to the line it blocks at.
NOT_SEEN_ON_A_CPU = placeholder("thread not seen on a CPU")
STACK_TABLE_FULL = table_full("stack")
# The `thread` label of the samples of threads that no longer fitted in the thread table.
THREAD_TABLE_FULL = table_full("thread").function

# Native samplers still running. Their threads must be stopped while the interpreter can still
# be entered: at exit, before finalization (in a forked child, stop() only hands the table over).
_running: set = set()


def stop_all_at_exit() -> None:
    while _running:
        try:
            _running.pop().stop()  # What it recorded is discarded.
        except Exception:  # Exiting anyway: never a traceback into the host's exit.
            log.exception("pyprofiler: stopping a sampler at exit failed")


atexit.register(stop_all_at_exit)


class NativeStackBackend:
    def __init__(self, hz: int, wall: bool) -> None:
        self._sampler = native.StackSampler(hz, wall)
        self.own_cpu_ns = 0

    def start(self) -> None:
        self._sampler.start()
        _running.add(self._sampler)

    def stop(self) -> tuple[list[Sample], str | None, dict[str, int]]:
        _running.discard(self._sampler)
        records, unseen, self.own_cpu_ns, error, stats = self._sampler.stop()
        return _samples(records, unseen), error, stats

    def cut(self) -> tuple[list[Sample], dict[str, int]] | None:
        window = self._sampler.cut()
        if window is None:
            return None
        records, unseen, stats = window
        return _samples(records, unseen), stats

    def include_own_threads(self, include: bool) -> None:
        self._sampler.include_own_threads(include)

    def expire_after(self, seconds: float) -> None:
        self._sampler.expire_after(seconds)


def _samples(records: list, unseen: list) -> list[Sample]:
    # Threads are named as threading names them at stop. One that has exited since its
    # samples (its ident may now be another thread's) is named by its kernel id, as threads
    # that threading does not know are.
    threads = threading._active  # type: ignore[attr-defined]

    def thread_name(ident: int, tid: int, alive: bool, own: bool) -> str:
        thread = threads.get(ident) if alive else None
        if thread is not None:
            name = thread.name
        elif tid:
            name = f"thread-{tid}"
        elif own:  # Ended before the sampler learnt its kernel id.
            name = "thread"
        else:
            return THREAD_TABLE_FULL
        return creation.own_thread_name(name) if own else name

    namer = FrameNamer()
    samples = []
    for stack, ident, tid, alive, own, value, count, label_set, _first in records:
        frames = namer.stack(stack) if stack is not None else (STACK_TABLE_FULL,)
        labels = (("thread", thread_name(ident, tid, alive, own)),) + labelsets.resolve(label_set)
        samples.append(Sample(frames, (count, value), labels))
    for ident, tid, alive, own, cpu_ns in unseen:
        labels = (("thread", thread_name(ident, tid, alive, own)),)
        samples.append(Sample((NOT_SEEN_ON_A_CPU,), (0, cpu_ns), labels))
    return samples
