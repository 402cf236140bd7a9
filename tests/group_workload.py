"""Processes for tests/test_group.py, each serving pyprofiler on the port it is given.

    python tests/group_workload.py member PORT     serve PORT and compute in `burn` until stdin
                                                   closes; two started alike are sibling
                                                   workers of one service
    python tests/group_workload.py pool PORT       serve PORT, then a multiprocessing.Pool(4)
                                                   computes in `crunch` until stdin closes
    python tests/group_workload.py unrelated PORT  ask to serve PORT, print what serve() raised,
                                                   then show that the program goes on

Each prints `ready <pid> <holds port: 0|1>` once it serves. Every loop stops after
LIFETIME seconds whatever happens, so nothing outlives a test run.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time

import pyprofiler

LIFETIME = 120.0


def burn(stop: threading.Event) -> None:
    deadline = time.monotonic() + LIFETIME
    while not stop.is_set() and time.monotonic() < deadline:
        total = 0
        for i in range(20_000):
            total += i


def crunch(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def stop_when_stdin_closes() -> threading.Event:
    stop = threading.Event()

    def wait() -> None:
        # os.read, not sys.stdin: a thread blocked in sys.stdin holds its buffer's lock, and a
        # forked pool worker, which closes sys.stdin as it starts, would wait for it forever.
        while os.read(0, 4096):
            pass
        stop.set()

    threading.Thread(target=wait, name="stdin-watch", daemon=True).start()
    return stop


def member(port: int) -> None:
    server = pyprofiler.serve(port=port)
    print(f"ready {os.getpid()} {int(server.holds_port)}", flush=True)
    burn(stop_when_stdin_closes())


def pool(port: int) -> None:
    server = pyprofiler.serve(port=port)
    stop = stop_when_stdin_closes()
    deadline = time.monotonic() + LIFETIME
    with multiprocessing.get_context("fork").Pool(4) as workers:
        print(f"ready {os.getpid()} {int(server.holds_port)}", flush=True)
        while not stop.is_set() and time.monotonic() < deadline:
            workers.map(crunch, [100_000] * 8)


def unrelated(port: int) -> None:
    try:
        pyprofiler.serve(port=port)
    except pyprofiler.PyprofilerError as exc:
        print(f"PyprofilerError: {exc}", flush=True)
    print("still running", flush=True)


if __name__ == "__main__":
    {"member": member, "pool": pool, "unrelated": unrelated}[sys.argv[1]](int(sys.argv[2]))
