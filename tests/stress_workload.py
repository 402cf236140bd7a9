"""Stress for the native sampler, run as a script: CPU and wall profiles at 1 kHz, back to back,
while threads start and exit, recurse to 5 000 frames and back, raise through deep stacks, run
generators, coroutines and freshly exec'd code, and a server starts a thread per connection.
Beside them, a wall sampler is cut every few milliseconds, as a trace cuts its own (so that cuts
often meet a reading that is late). With --rates, the heap, block and mutex recorders are on too,
at their finest rates, and their profiles are built as the threads run.

    python tests/stress_workload.py --seconds 600 [--window 5]

Each sampler runs for a window, cut into consecutive profiles (StackSampler.cut) as it goes.

Every function here calls only the functions the CALLS table says it calls, so a sampled stack
that holds any other caller -> callee pair is a wrong frame: a stack read as it changed and not
caught. Prints one JSON line at the end: profiles taken, samples, the wrong pairs seen (at most
a few), and the samplers' own counts of dropped stacks. Exits 0 unless it crashed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import random
import socket
import socketserver
import sys
import threading
import time

import pyprofiler
from pyprofiler import registry
from pyprofiler.samplers.limits import MAX_STACK_DEPTH as MAX_DEPTH
from pyprofiler.samplers.native import native
from pyprofiler.samplers.stack import CpuSampler, WallSampler

RECURSION = 5000
CUTS = 3  # windows cut from each sampler before it stops (StackSampler.cut)
RATE_PROFILES = ("heap", "allocs", "block", "mutex")
MODULE = __name__

# caller -> the functions of this module it calls (directly, or through threading or asyncio).
CALLS = {
    "main": {"run_profiles"},
    "run_profiles": {"profile_for"},
    "profile_for": set(),
    "cutting": set(),
    "spawner": {"short_life", "compute"},
    "short_life": {"compute"},
    "recurser": {"deep", "compute"},
    "deep": {"deep", "compute"},
    "unwinder": {"climb", "settle"},
    "climb": {"climb"},
    "settle": set(),
    "raiser": {"raise_deep"},
    "raise_deep": {"raise_deep", "compute"},
    "generating": {"numbers", "compute"},
    "numbers": {"compute"},
    "event_loop": {"handler"},
    "handler": {"coroutine_chain"},
    "coroutine_chain": {"coroutine_chain", "compute"},
    "executing": {"<exec>"},
    "<exec>": {"compute"},
    "serving": set(),
    "handle": {"compute"},
    "compute": set(),
}
# What threading and asyncio run at the bottom of a thread's stack: no caller of ours.
ROOTS = {
    "main",
    "cutting",
    "spawner",
    "recurser",
    "unwinder",
    "raiser",
    "generating",
    "event_loop",
    "executing",
    "handler",
    "coroutine_chain",
    "short_life",
    "serving",
    "handle",
}


def compute(n: int = 200) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def short_life() -> None:
    compute(2000)


def spawner(stop: threading.Event) -> None:
    while not stop.is_set():
        threads = [threading.Thread(target=short_life) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        compute(100)


def deep(n: int) -> int:
    if n == 0:
        return compute(500)
    return deep(n - 1) + 1


def recurser(stop: threading.Event) -> None:
    while not stop.is_set():
        deep(RECURSION)
        compute(100)


def climb(n: int) -> int:
    if n == 0:
        return 0
    return climb(n - 1) + 1


def settle(n: int) -> int:
    while n:
        n = n - 1
    return n


def unwinder(stop: threading.Event) -> None:
    """Calls and returns all the time, and a frame smaller than climb's takes the slot of the
    outermost climb as soon as the recursion has unwound: the inner climbs, returned, still
    seem linked to it (the slot's old frame) until something overwrites them."""
    while not stop.is_set():
        climb(100)
        settle(30)


def raise_deep(n: int) -> None:
    if n == 0:
        compute(50)
        raise ValueError("bottom")
    raise_deep(n - 1)


def raiser(stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            raise_deep(300)
        except ValueError:
            pass


def numbers(count: int):
    for i in range(count):
        yield compute(50) + i


def generating(stop: threading.Event) -> None:
    while not stop.is_set():
        for _ in numbers(100):
            pass
        compute(10)


async def coroutine_chain(depth: int) -> int:
    if depth == 0:
        await asyncio.sleep(0)
        return compute(100)
    return await coroutine_chain(depth - 1)


async def handler(stop: threading.Event) -> None:
    while not stop.is_set():
        await coroutine_chain(20)


def event_loop(stop: threading.Event) -> None:
    async def run() -> None:
        await asyncio.gather(*(handler(stop) for _ in range(20)))

    asyncio.run(run())


def executing(stop: threading.Event) -> None:
    for serial in itertools.count():
        if stop.is_set():
            return
        # Fresh source every time: a new code object each round, freed after it.
        source = f"compute({serial % 7 + 100})\n" * 20
        exec(compile(source, f"<exec {serial}>", "exec"), {"compute": compute})


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            compute(300)
            self.wfile.write(line)


def serving(stop: threading.Event) -> None:
    """A server with a thread per connection, and clients connecting again and again."""
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        while not stop.is_set():
            with socket.create_connection(server.server_address, timeout=10) as connection:
                for _ in range(5):
                    connection.sendall(b"ping\n")
                    connection.recv(16)
        server.shutdown()


def wrong_pairs(stack: tuple) -> list[tuple[str, str]]:
    """Caller -> callee pairs of this module's frames that CALLS does not allow."""
    ours = []
    for frame in stack:
        if frame.filename.startswith("<exec "):
            ours.append("<exec>")
        elif frame.function.startswith(f"{MODULE}."):
            ours.append(frame.function.rsplit(".", 1)[-1])
    ours = [name for name in ours if name in CALLS]
    wrong = []
    for callee, caller in zip(ours, ours[1:]):
        if callee not in CALLS[caller]:
            wrong.append((caller, callee))
    if ours and ours[-1] not in ROOTS and len(stack) < MAX_DEPTH:  # else it lost its roots
        wrong.append(("<root>", ours[-1]))
    return wrong


def record(summary: dict, snapshot, stats: dict) -> None:
    summary["profiles"] += 1
    summary["samples"] += sum(s.values[0] for s in snapshot.samples)
    for sample in snapshot.samples:
        for pair in wrong_pairs(sample.frames):
            if len(summary["wrong"]) < 20:
                summary["wrong"].append(pair)
    for key in ("dropped", "unpinned"):  # Counted per window.
        summary[key] += stats.get(key, 0)
    dropped = stats.get("dropped", 0)
    if dropped and not any(f" {dropped} samples dropped" in c for c in snapshot.comments):
        summary["drops_not_in_comments"] += 1
    summary["max_gil_hold_ns"] = max(summary["max_gil_hold_ns"], stats.get("max_gil_hold_ns", 0))


def cutting(stop: threading.Event, summary: dict) -> None:
    """The trace's sampler (samplers/trace_stacks.py): 1 kHz wall time, cut every 0 to 10 ms."""
    choose = random.Random(0).choice
    while not stop.is_set():
        sampler = native.StackSampler(1000, True)
        sampler.start()
        for _ in range(100):
            time.sleep(choose((0, 0.0005, 0.002, 0.01)))
            records = sampler.cut()[0]
            summary["rapid_cuts"] += 1
            summary["rapid_samples"] += sum(record[6] for record in records)
        sampler.stop()


def run_profiles(seconds: float, window: float, rates: bool) -> dict:
    """CPU and wall samplers for `window` seconds each, cut into CUTS + 1 windows, beside
    the rapidly cut one."""
    summary = {
        "profiles": 0,
        "samples": 0,
        "wrong": [],
        "dropped": 0,
        "unpinned": 0,
        "torn_readings": 0,
        "max_gil_hold_ns": 0,
        "drops_not_in_comments": 0,
        "rapid_cuts": 0,
        "rapid_samples": 0,
        "rate_profiles": 0,
    }
    stop_cutting = threading.Event()
    cutter = threading.Thread(target=cutting, args=(stop_cutting, summary), name="cutting")
    cutter.start()
    try:
        profile_for(seconds, window, rates, summary)
    finally:
        stop_cutting.set()
        cutter.join(timeout=30)
    return summary


def profile_for(seconds: float, window: float, rates: bool, summary: dict) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samplers = [CpuSampler(1000), WallSampler(1000)]
        for sampler in samplers:
            sampler.start()
        part = min(window, max(0.1, deadline - time.monotonic())) / (CUTS + 1)
        for _ in range(CUTS):
            time.sleep(part)
            for sampler in samplers:
                record(summary, sampler.cut(), sampler.stats)
        time.sleep(part)
        for sampler in samplers:
            record(summary, sampler.stop(), sampler.stats)
            summary["torn_readings"] += sampler.stats.get("torn_readings", 0)
        for name in RATE_PROFILES if rates else ():
            registry.lookup(name).write_to(io.BytesIO())
            summary["rate_profiles"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--window", type=float, default=5)
    parser.add_argument("--rates", action="store_true", help="heap, block and mutex recorders on")
    args = parser.parse_args()
    if args.rates:
        pyprofiler.set_mem_profile_rate(512)
        pyprofiler.set_block_profile_rate(1)
        pyprofiler.set_mutex_profile_fraction(1)
    sys.setrecursionlimit(RECURSION + 1000)
    if sys.version_info < (3, 12):
        threading.stack_size(64 << 20)  # 5 000 Python frames use the C stack before 3.11
    stop = threading.Event()
    workers = [spawner, recurser, unwinder, raiser, generating, event_loop, executing, serving]
    threads = [threading.Thread(target=w, args=(stop,), name=w.__name__) for w in workers]
    for thread in threads:
        thread.start()
    try:
        summary = run_profiles(args.seconds, args.window, args.rates)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    summary["alive"] = [t.name for t in threads if t.is_alive()]
    summary["extension"] = native.__file__
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
