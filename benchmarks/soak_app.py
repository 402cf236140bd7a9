"""The service of benchmarks/soak.py, run as a script: a Flask app served by waitress (a fixed pool
of request threads over keep-alive connections, as in production) whose requests parse, allocate
(some of it kept in a bounded cache), take a contended lock, pass a queue and render; beside it a
thread that starts short-lived threads and an asyncio loop whose tasks allocate and sleep, as a
long-running service does.

    python benchmarks/soak_app.py [--no-profilers] [--new-site-after SECONDS] [--cpu N]

With profilers (the default): pyprofiler serves on a free port with every profiler on (heap at
Go's default rate, block rate 1, mutex fraction 1). After --new-site-after seconds a thread starts
keeping memory from a function of its own, `late_allocation_site`: the heap profile must show it
by name however long the process ran before. Prints one JSON line {"port", "pprof"} and obeys
stdin lines "profilers on" / "profilers off" (the rates only), "cpu profile on" / "cpu profile
off" (start_cpu_profile into memory: the sampler without HTTP) and "quit".
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import logging
import os
import queue
import random
import sys
import threading

from common import HTTP_CLIENTS
from flask import Flask
from waitress.server import create_server

HOST = "127.0.0.1"
CACHE_ENTRIES = 2_000


def parse(payload: str) -> dict:
    fields = {}
    for part in payload.split("&"):
        key, _, value = part.partition("=")
        fields[key] = [value] * (len(value) % 7 + 1)
    return fields


def render(fields: dict, rows: int) -> str:
    return "\n".join(
        f"<tr><td>{key}</td><td>{values}</td></tr>"
        for key, values in sorted(fields.items())
        for _ in range(rows)
    )


def make_app() -> Flask:
    app = Flask("soak")
    cache: collections.OrderedDict = collections.OrderedDict()
    cache_lock = threading.Lock()
    handoff: queue.Queue = queue.Queue()

    @app.route("/work")
    def work() -> str:
        n = random.randrange(1_000_000)
        fields = parse("&".join(f"k{i}={n * i:x}" for i in range(random.randrange(5, 40))))
        with cache_lock:  # Contended by every request thread: block and mutex events.
            cache[n] = bytes(random.randrange(64, 8192))
            if len(cache) > CACHE_ENTRIES:
                cache.popitem(last=False)
        handoff.put(fields)
        body = render(handoff.get(), random.randrange(2, 12))
        return body

    return app


def short_lived_threads(stop: threading.Event) -> None:
    def chore(size: int) -> None:
        sum(len(str(i)) for i in range(size))

    while not stop.wait(0.1):
        thread = threading.Thread(target=chore, args=(random.randrange(1_000, 5_000),))
        thread.start()
        thread.join()


async def task_churn(stop: threading.Event) -> None:
    async def job(size: int) -> int:
        data = [str(i) * 3 for i in range(size)]
        await asyncio.sleep(random.random() / 10)
        return len(data)

    while not stop.is_set():
        await asyncio.gather(*(job(random.randrange(10, 500)) for _ in range(20)))


def late_allocation_site(stop: threading.Event) -> None:
    kept = []
    while not stop.wait(0.05) and len(kept) < 40:
        kept.append(bytearray(64 * 1024))  # 2.5 MB kept, a block at a time.
    stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-profilers", action="store_true")
    parser.add_argument("--new-site-after", type=float, default=540)
    parser.add_argument("--cpu", type=int, help="run on this CPU only (every thread inherits it)")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    stop = threading.Event()
    # One request thread per load-generator connection; waitress warns whenever requests queue.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    server = create_server(make_app(), host=HOST, port=0, threads=HTTP_CLIENTS)
    threading.Thread(target=server.run, name="http-server", daemon=True).start()
    threading.Thread(target=short_lived_threads, args=(stop,), name="spawner", daemon=True).start()
    threading.Thread(
        target=asyncio.run, args=(task_churn(stop),), name="event-loop", daemon=True
    ).start()
    late = threading.Timer(args.new_site_after, late_allocation_site, (stop,))
    late.daemon = True
    late.start()
    pprof = None
    if not args.no_profilers:
        import pyprofiler

        pprof = pyprofiler.serve(port=0, block_profile_rate=1, mutex_profile_fraction=1).url
    print(json.dumps({"port": int(server.effective_port), "pprof": pprof}), flush=True)
    cpu_profiling = False
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command in ("profilers on", "profilers off") and pprof is not None:
            import pyprofiler

            on = command == "profilers on"
            pyprofiler.set_mem_profile_rate(512 * 1024 if on else 0)
            pyprofiler.set_block_profile_rate(1 if on else 0)
            pyprofiler.set_mutex_profile_fraction(1 if on else 0)
            print(json.dumps({"profilers": on}), flush=True)
        if command in ("cpu profile on", "cpu profile off") and pprof is not None:
            import pyprofiler

            wanted = command == "cpu profile on"
            if wanted and not cpu_profiling:
                pyprofiler.start_cpu_profile(io.BytesIO())
            elif cpu_profiling and not wanted:
                pyprofiler.stop_cpu_profile()
            cpu_profiling = wanted
            print(json.dumps({"cpu profile": wanted}), flush=True)
    stop.set()
    server.close()


if __name__ == "__main__":
    main()
