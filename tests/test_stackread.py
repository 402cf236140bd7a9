"""The native sampler's own reading of the interpreter's structures
(samplers/_native/stackread.c), on this Python's layout: line tables decoded as the interpreter
decodes them, and stacks copied without the GIL that hold together while their threads run."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from pyprofiler.samplers.native import native

pytestmark = pytest.mark.skipif(native is None, reason="needs the C extension")

STRESS = Path(__file__).with_name("stress_workload.py")

_addr2line = ctypes.pythonapi.PyCode_Addr2Line
_addr2line.argtypes = (ctypes.py_object, ctypes.c_int)
_addr2line.restype = ctypes.c_int


def code_objects(limit: int = 4000):
    """Code objects of the modules loaded here, nested ones included."""
    seen: set[int] = set()
    found = []
    pending = [
        value.__code__
        for module in list(sys.modules.values())
        for value in list(getattr(module, "__dict__", {}).values())
        if isinstance(value, types.FunctionType)
    ]
    while pending and len(found) < limit:
        code = pending.pop()
        if id(code) in seen:
            continue
        seen.add(id(code))
        found.append(code)
        pending.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return found


def test_this_process_can_copy_its_own_memory():
    assert native.stack_reads_available()


def test_line_numbers_match_the_interpreter_at_every_offset():
    codes = code_objects()
    assert len(codes) > 1000
    checked = 0
    for code in codes:
        for offset in range(-2, len(code.co_code), 2):
            assert native.line_of(code, offset) == _addr2line(code, offset), (code, offset)
            checked += 1
    assert checked > 50_000


def test_sampled_stacks_hold_together_under_churn():
    """Threads start and exit, recurse 5 000 deep, raise, generate, await and exec fresh code
    while CPU and wall profiles run at 1 kHz: no crash, and no stack with a caller -> callee
    pair that the program never makes."""
    completed = subprocess.run(
        [sys.executable, str(STRESS), "--seconds", "8", "--window", "4"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["wrong"] == [], summary
    assert summary["profiles"] >= 4
    assert summary["samples"] > 5000, summary
    assert summary["alive"] == []
    assert summary["drops_not_in_comments"] == 0, summary
    # Drops are the price of never stopping a thread; they stay a small part.
    assert summary["dropped"] < 0.2 * summary["samples"], summary


def short_request() -> int:
    total = 0
    for i in range(60_000):  # A few milliseconds of CPU: less than a tick or two.
        total += i * i
    return total


def test_threads_that_live_a_tick_are_charged_to_their_own_code():
    """A server that starts a thread per request: each thread computes for a few milliseconds
    and ends. Its kernel id, which its CPU clock needs, is read from its thread state (3.11+) or
    from glibc's struct pthread (3.9, 3.10) without waiting for the GIL, so its CPU is charged
    to its stack, not left stackless."""
    from pyprofiler.samplers.stack import CpuSampler

    sampler = CpuSampler(100)
    sampler.start()
    deadline = time.monotonic() + 3
    started = 0
    while time.monotonic() < deadline and started < 10_000:
        thread = threading.Thread(target=short_request)
        thread.start()
        thread.join(timeout=10)
        started += 1
    snapshot = sampler.stop()
    total = sum(sample.values[1] for sample in snapshot.samples)
    charged = sum(
        sample.values[1]
        for sample in snapshot.samples
        if any(frame.function.endswith(".short_request") for frame in sample.frames)
    )
    assert started > 50 and charged >= 0.6 * total, (started, charged, total, sampler.stats)
