"""The native sampler's own reading of the interpreter's structures
(samplers/_native/stackread.c), on this Python's layout: line tables decoded as the interpreter
decodes them, and stacks copied without the GIL that hold together while their threads run."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
import types
from pathlib import Path

import pytest

from pyprofiler.samplers.native import native

pytestmark = pytest.mark.skipif(native is None, reason="needs the C extension")

STRESS = Path(__file__).with_name("stress_workload.py")
PACKAGE = Path(__file__).resolve().parent.parent / "pyprofiler"

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
    assert summary["rapid_cuts"] >= 50 and summary["rapid_samples"] > 1000, summary


def sanitized_package(into: Path) -> Path:
    """A copy of the package whose extension is built with AddressSanitizer: the directory to
    put on PYTHONPATH."""
    shutil.copytree(
        PACKAGE, into / "pyprofiler", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    sources = sorted(str(path) for path in (PACKAGE / "samplers" / "_native").glob("*.c"))
    extension = (
        into / "pyprofiler" / "samplers" / ("_native" + sysconfig.get_config_var("EXT_SUFFIX"))
    )
    build = [
        "gcc",
        "-shared",
        "-fPIC",
        "-O1",
        "-g",
        "-fwrapv",
        "-DNDEBUG",
        "-fno-omit-frame-pointer",
    ]
    build += [
        "-fsanitize=address",
        "-I",
        sysconfig.get_paths()["include"],
        *sources,
        "-o",
        str(extension),
    ]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    return into


@pytest.mark.slow
def test_the_stress_touches_no_freed_or_foreign_memory(tmp_path):
    """The stress above, the heap, block and mutex recorders on too, against the extension
    built with AddressSanitizer: no read or write of memory freed or out of bounds (a cut once
    emptied the sampler's tables while a late reading was filling them, which ended a CI run on
    3.9 in glibc's abort)."""
    libasan = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert os.path.isabs(libasan), "gcc's AddressSanitizer runtime (libasan) is not installed"
    env = dict(os.environ, PYTHONPATH=str(sanitized_package(tmp_path)), LD_PRELOAD=libasan)
    # Freed memory zeroed: a freed object's count reads 0, as pymalloc and glibc leave it (or a
    # free-list pointer), where AddressSanitizer's own records could pass for a live count.
    env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:max_free_fill_size=65536:free_fill_byte=0"
    stress = [sys.executable, str(STRESS), "--seconds", "20", "--window", "4", "--rates"]
    completed = subprocess.run(
        stress, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr[-6000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["extension"].startswith(str(tmp_path)), summary["extension"]
    assert summary["wrong"] == [] and summary["rapid_cuts"] >= 100, summary
    assert summary["rate_profiles"] >= 2 * 4, summary  # Two rounds of heap, allocs, block, mutex.


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
