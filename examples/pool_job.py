"""A batch job that fans out over a multiprocessing.Pool(4): each task crunches a chunk of
numbers (the CPU work, in `crunch`) and the parent adds up the results.

Unmodified, under the runner (the pool's processes are profiled with the parent, whether they
are forked or spawned; the port answers for all of them):

    python -m pyprofiler run --port 6060 examples/pool_job.py --seconds 60

Or with serve() in the parent, before the pool starts (its forked children join it):

    PPROF_PORT=6060 python examples/pool_job.py --seconds 60

Then, while it runs:

    go tool pprof -top 'http://127.0.0.1:6060/debug/pprof/profile?seconds=10'
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

import pyprofiler


def crunch(seed: int) -> int:
    total = 0
    value = seed
    for _ in range(200_000):
        value = (value * 1_103_515_245 + 12_345) % 2_147_483_648
        total += value % 1_000
    return total


def run_job(seconds: float, processes: int, start_method: str | None) -> tuple[int, int]:
    context = multiprocessing.get_context(start_method)
    deadline = time.monotonic() + seconds
    tasks = grand_total = 0
    with context.Pool(processes) as pool:
        while time.monotonic() < deadline:
            for result in pool.imap_unordered(crunch, range(tasks, tasks + 4 * processes)):
                grand_total += result
                tasks += 1
    return tasks, grand_total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="how long the job runs")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--start-method", choices=multiprocessing.get_all_start_methods())
    args = parser.parse_args()
    # This job's own switch for serving; under `python -m pyprofiler run`, leave it unset.
    if os.environ.get("PPROF_PORT"):
        pyprofiler.serve(port=int(os.environ["PPROF_PORT"]))
    print(f"pool job: pid {os.getpid()}, {args.processes} processes", flush=True)
    tasks, grand_total = run_job(args.seconds, args.processes, args.start_method)
    print(f"pool job: {tasks} chunks crunched, total {grand_total}", flush=True)


if __name__ == "__main__":
    main()
