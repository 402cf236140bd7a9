"""How long the goroutine profile takes with many threads and tasks, and how long it stalls the
event loop it inspects.

    python benchmarks/goroutines.py [--threads 2000] [--tasks 50000]

Bars (issue 4): the profile in under 2 s; the inspected loop never stalled longer than 20 ms.
The loop runs in its own thread with a 1 ms ticker; the longest gap between ticks while the
profile is built, minus the 1 ms period, is the stall.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import threading
import time

import pyprofiler


async def wait_for_reply(event: asyncio.Event) -> None:
    await event.wait()


async def fetch(event: asyncio.Event) -> None:
    await wait_for_reply(event)


async def handler(event: asyncio.Event) -> None:
    await fetch(event)


class LoopUnderTest:
    """An event loop thread with `tasks` stuck tasks and a ticker that records the largest gap."""

    def __init__(self, tasks: int) -> None:
        self.ready = threading.Event()
        self.largest_gap = 0.0
        self.measuring_since: float | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, args=(tasks,), name="loop", daemon=True)

    def _run(self, tasks: int) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main(tasks))

    async def _main(self, tasks: int) -> None:
        self.event = asyncio.Event()
        self.stuck = [
            asyncio.create_task(handler(self.event), name=f"req-{i}") for i in range(tasks)
        ]
        # Let every task take its first step and park on the event before the benchmark's
        # collection: what the tasks allocate on their way there is not the profiler's doing.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        self.ready.set()
        last = time.perf_counter()
        while not self.event.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            # Only gaps that began while measuring: not a collection the benchmark ran before.
            if self.measuring_since is not None and last >= self.measuring_since:
                self.largest_gap = max(self.largest_gap, now - last)
            last = now
        await asyncio.gather(*self.stuck)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.event.set)
        self.thread.join(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=50_000)
    args = parser.parse_args()

    release = threading.Event()
    threads = [threading.Thread(target=release.wait, daemon=True) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    loop = LoopUnderTest(args.tasks)
    loop.thread.start()
    loop.ready.wait(timeout=120)
    gc.collect()  # Settle the collector's debt from creating the tasks before measuring.

    profile = pyprofiler.lookup("goroutine")
    # Each debug level three times, then a delta (?seconds=1): two snapshots and a subtraction.
    for form in ("debug=0", "debug=1", "debug=2") * 3 + ("seconds=1",):
        loop.largest_gap = 0.0
        started = loop.measuring_since = time.perf_counter()
        out = io.BytesIO()
        if form == "seconds=1":
            profile.write_delta(out, 1.0)
        else:
            profile.write_to(out, debug=int(form[-1]))
        elapsed = time.perf_counter() - started
        time.sleep(0.2)  # Anything the profile left behind (freeing, a collection) counts too.
        loop.measuring_since = None
        stall_ms = max(0.0, loop.largest_gap - 0.001) * 1000
        time_bar = 3 if form == "seconds=1" else 2  # A delta sleeps its 1 s between snapshots.
        print(
            f"goroutine {form}: {args.threads} threads + {args.tasks} tasks in "
            f"{elapsed:.2f} s ({'PASS' if elapsed < time_bar else 'FAIL'} < {time_bar} s); "
            f"longest loop stall {stall_ms:.1f} ms ({'PASS' if stall_ms <= 20 else 'FAIL'} "
            f"<= 20 ms); {len(out.getvalue())} bytes"
        )
    loop.stop()
    release.set()
    for thread in threads:
        thread.join(timeout=10)


if __name__ == "__main__":
    main()
