"""Workload for test_unusual_programs.py, run as a script: a legal but unusual program. Its
functions, files, threads and tasks are named with lone surrogates (the undecodable byte of a
file name as os.fsdecode gives it, and a surrogate built at run time), and most of its code has
no line table (as code objects rebuilt by tools have: `f_lineno` is None on 3.10+). It computes,
blocks on a lock, waits in a task, allocates, contends and fills a custom profile, all in that
code, and serves its profiles with every profiler on.

Prints the server URL and whether its frames without a line table read `f_lineno` None, on one
line; then waits for a line on stdin ("quit"), EOF, or MAX_SECONDS, whichever comes first, and
stops and joins everything it started.
"""

from __future__ import annotations

import asyncio
import builtins
import select
import sys
import threading
import time
import types

import pyprofiler
from pyprofiler.samplers.native import native

MAX_SECONDS = 120
UNDECODABLE = "\udce9"  # b"\xe9" in a file name, through os.fsdecode
LONE = "\ud800"  # a surrogate that no decoding produces: a name built at run time

SOURCE = """
def compute(stop):
    while not stop.is_set():
        total = 0
        for i in range(20000):
            total += i


def blocked(lock):
    lock.acquire()
    lock.release()


def allocate(keep):
    for _ in range(64):
        keep.append(bytearray(65536))


def contend(lock, stop):
    while not stop.is_set():
        lock.acquire()
        time.sleep(0.002)
        lock.release()
        time.sleep(0.001)


def record(profile, value):
    profile.add(value)


async def wait(event):
    await event.wait()
"""


def unusual(name: str, filename: str, keep_lines: bool = False) -> types.FunctionType:
    """SOURCE's function `name`, renamed `name` + a surrogate, from `filename`; without a line
    table unless `keep_lines`."""
    module = compile(SOURCE, filename, "exec")
    code = next(c for c in module.co_consts if isinstance(c, types.CodeType) and c.co_name == name)
    odd_name = f"{name}{UNDECODABLE}{LONE}"
    changes: dict = {"co_name": odd_name}
    if sys.version_info >= (3, 11):
        changes["co_qualname"] = odd_name
    if not keep_lines:
        changes["co_linetable" if sys.version_info >= (3, 10) else "co_lnotab"] = b""
    function_globals = {"__builtins__": builtins, "time": time}
    return types.FunctionType(code.replace(**changes), function_globals, odd_name)


ODD_FILE = f"/srv/caf{UNDECODABLE}/legacy{LONE}.py"
compute = unusual("compute", ODD_FILE)
compute_with_lines = unusual("compute", f"<exec {LONE}>", keep_lines=True)
blocked = unusual("blocked", ODD_FILE)
allocate = unusual("allocate", ODD_FILE)
contend = unusual("contend", ODD_FILE)
record = unusual("record", ODD_FILE)
wait = unusual("wait", ODD_FILE)

server = pyprofiler.serve(host="127.0.0.1", port=0, block_profile_rate=1, mutex_profile_fraction=1)
if native is None:
    pyprofiler.set_mem_profile_rate(1)  # The heap profile's tracemalloc fallback starts so.
stop = threading.Event()
held = threading.Lock()
held.acquire()
contended = threading.Lock()  # Made after the rates were set: a profiled lock.
kept: list = []
objects = pyprofiler.new_profile("unusual/objects")

loop = asyncio.new_event_loop()
threads = [
    threading.Thread(target=compute, args=(stop,), name=f"compute-{LONE}"),
    threading.Thread(target=compute_with_lines, args=(stop,), name=f"lines-{UNDECODABLE}"),
    threading.Thread(target=blocked, args=(held,), name=f"blocked-{UNDECODABLE}{LONE}"),
    threading.Thread(target=contend, args=(contended, stop), name=f"contend-{LONE}-1"),
    threading.Thread(target=contend, args=(contended, stop), name=f"contend-{LONE}-2"),
    threading.Thread(target=loop.run_forever, name=f"loop-{UNDECODABLE}"),
]
for thread in threads:
    thread.start()


async def start_waiter() -> tuple[asyncio.Event, asyncio.Task]:
    event = asyncio.Event()  # Made inside the loop: 3.9 binds an Event to the loop it sees.
    return event, asyncio.get_running_loop().create_task(wait(event), name=f"task-{LONE}")


event, task = asyncio.run_coroutine_threadsafe(start_waiter(), loop).result(timeout=10)
allocate(kept)
record(objects, "one")


def lines_unknown() -> bool:
    """Whether the blocked thread's frame, which has no line table, reads no line number."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        top = sys._current_frames().get(threads[2].ident)
        if top is not None and top.f_code is blocked.__code__:
            return top.f_lineno is None
        time.sleep(0.01)
    return False


try:
    print(server.url, "lines-unknown" if lines_unknown() else "lines-known", flush=True)
    select.select([sys.stdin], [], [], MAX_SECONDS)
finally:
    stop.set()
    held.release()
    loop.call_soon_threadsafe(event.set)
    asyncio.run_coroutine_threadsafe(asyncio.wait_for(task, 10), loop).result(timeout=15)
    loop.call_soon_threadsafe(loop.stop)
    for thread in threads:
        thread.join(timeout=10)
    loop.close()
    server.stop()
