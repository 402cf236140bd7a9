"""CPU time of another thread of this process, read from its kernel thread id.

Linux names every thread's CPU clock by its tid (the kernel's MAKE_THREAD_CPUCLOCK encoding), so
no pthread handle is needed. A thread that has exited, or a tid that now belongs to another
process, makes clock_gettime fail with EINVAL, which `thread_cpu_ns` reports as None: the sampler
never holds anything that can dangle.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

_CPUCLOCK_SCHED = 2
_CPUCLOCK_PERTHREAD = 4

SUPPORTED = sys.platform.startswith("linux") and hasattr(time, "clock_gettime_ns")


def thread_cpu_ns(
    tid: int,
    _gettime: Callable[[int], int] = time.clock_gettime_ns,
    _flags: int = _CPUCLOCK_PERTHREAD | _CPUCLOCK_SCHED,
) -> int | None:
    """Nanoseconds of CPU the thread with kernel id `tid` has used, or None if it is gone.

    (The defaults bind the clock call and flags once: this runs for every thread at 100 Hz.)"""
    try:
        return _gettime((~tid << 3) | _flags)
    except OSError:
        return None
