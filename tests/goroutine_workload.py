"""Workload for test_goroutine.py, run as a script: a thread and an asyncio task that exist
before pyprofiler is imported (so no creation record can exist for them), then a thread and a
task started after the import, all blocked until the end.

Prints the server URL, then waits for a line on stdin ("quit"), EOF, or MAX_SECONDS, whichever
comes first, and releases and joins everything it started, so it never outlives the test.
"""

from __future__ import annotations

import asyncio
import select
import sys
import threading

MAX_SECONDS = 60
release = threading.Event()


def early_worker() -> None:
    release.wait(MAX_SECONDS)


def late_worker() -> None:
    release.wait(MAX_SECONDS)


async def early_waiter(event: asyncio.Event) -> None:
    await event.wait()


async def late_waiter(event: asyncio.Event) -> None:
    await event.wait()


async def spawn_task(coroutine_function, name: str):
    event = asyncio.Event()  # Made inside the loop: 3.9 binds an Event to the loop it sees.
    return event, asyncio.get_running_loop().create_task(coroutine_function(event), name=name)


async def finish(tasks) -> None:
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)


def run(loop: asyncio.AbstractEventLoop, coroutine):
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=10)


early_thread = threading.Thread(target=early_worker, name="early-thread")
early_thread.start()
loop = asyncio.new_event_loop()
loop_thread = threading.Thread(target=loop.run_forever, name="early-loop")
loop_thread.start()
early_event, early_task = run(loop, spawn_task(early_waiter, "early-task"))

import pyprofiler  # noqa: E402 - on purpose, after the early thread and task.


def start_late() -> threading.Thread:
    thread = threading.Thread(target=late_worker, name="late-thread")
    thread.start()
    return thread


late_thread = start_late()
late_event, late_task = run(loop, spawn_task(late_waiter, "late-task"))
server = pyprofiler.serve(host="127.0.0.1", port=0)
try:
    print(server.url, flush=True)
    select.select([sys.stdin], [], [], MAX_SECONDS)
finally:
    release.set()
    for event in (early_event, late_event):
        loop.call_soon_threadsafe(event.set)
    run(loop, finish([early_task, late_task]))
    loop.call_soon_threadsafe(loop.stop)
    for thread in (loop_thread, early_thread, late_thread):
        thread.join(timeout=10)
    loop.close()
    server.stop()
