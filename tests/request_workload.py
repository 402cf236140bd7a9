"""Request-shaped work, run as a script: threads that compute between blocking calls, as a
request handler parses, waits on a database and renders.

Each worker thread loops: parse() (~2.5 ms of CPU), render() (~7.5 ms), then one blocking wait
of ~10 ms of its kind: `sleep` (time.sleep), `socket` (a recv on a socket whose peer answers
after 10 ms), `queue` (a queue.Queue.get answered after 10 ms) or `lock` (a Lock that another
thread holds 10 ms at a time). Each worker times its own parse() and render() with its thread
CPU clock, so that a profile can be compared with the truth. Optional idle threads wait on an
Event beside them.

    python tests/request_workload.py --waits sleep,socket,queue,lock [--copies 2] [--idle 100]
                                     [--hz 100]

Prints a JSON line {"url": the pyprofiler server's URL, "threads": {"thread name": ident}}
naming the worker threads, then obeys stdin lines: "mark" (start a measuring window), "report"
(print the window's {"thread name": Counters} as JSON), "quit". Exits by itself after
--max-seconds or on stdin EOF. Tests that profile in their own process use Workers directly.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import sys
import threading
import time

import pyprofiler

PARSE_NS = 2_500_000
RENDER_NS = 7_500_000
WAIT_SECONDS = 0.010
WAITS = ("sleep", "socket", "queue", "lock")


def compute(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i & 1023
    return total


def parse(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i & 1023
    return total


def render(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i & 1023
    return total


def calibrate() -> int:
    """Loop iterations per millisecond of CPU on this machine, the best of a few tries."""
    best = 0.0
    for _ in range(5):
        start = time.thread_time_ns()
        compute(50_000)
        best = max(best, 50_000 / ((time.thread_time_ns() - start) / 1e6))
    return int(best)


class Counters:
    """What a worker timed: CPU in parse() and render() and in all, wall time waiting and in
    all, in nanoseconds."""

    def __init__(self) -> None:
        self.parse = 0
        self.render = 0
        self.cpu = 0
        self.wait_wall = 0
        self.wall = 0

    def snapshot(self) -> dict[str, int]:
        return dict(vars(self))


def wait_sleep(_state) -> None:
    time.sleep(WAIT_SECONDS)


def wait_socket(state) -> None:
    state.send(b"?")
    state.recv(1)


def wait_queue(state) -> None:
    requests, answers = state
    requests.put(1)
    answers.get()


def wait_lock(state) -> None:
    with state:
        pass


def answer_socket(peer: socket.socket, stop: threading.Event) -> None:
    peer.settimeout(0.5)
    while not stop.is_set():
        try:
            if not peer.recv(1):
                return
        except socket.timeout:
            continue
        time.sleep(WAIT_SECONDS)
        peer.send(b"!")


def answer_queue(requests: queue.Queue, answers: queue.Queue, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            requests.get(timeout=0.5)
        except queue.Empty:
            continue
        time.sleep(WAIT_SECONDS)
        answers.put(1)


def hold_lock(lock: threading.Lock, stop: threading.Event) -> None:
    while not stop.is_set():
        with lock:
            time.sleep(WAIT_SECONDS)
        time.sleep(0.0005)  # The waiter takes the lock in this gap.


def start_wait(kind: str, stop: threading.Event, helpers: list):
    """The state a worker's wait needs, with the helper thread that answers it."""
    if kind == "sleep":
        return None
    if kind == "socket":
        mine, peer = socket.socketpair()
        helpers.append(threading.Thread(target=answer_socket, args=(peer, stop)))
        return mine
    if kind == "queue":
        requests: queue.Queue = queue.Queue()
        answers: queue.Queue = queue.Queue()
        helpers.append(threading.Thread(target=answer_queue, args=(requests, answers, stop)))
        return requests, answers
    lock = threading.Lock()
    helpers.append(threading.Thread(target=hold_lock, args=(lock, stop)))
    return lock


def worker(kind: str, state, per_ms: int, stop: threading.Event, counters: Counters) -> None:
    wait = globals()[f"wait_{kind}"]
    parse_n = per_ms * PARSE_NS // 1_000_000
    render_n = per_ms * RENDER_NS // 1_000_000
    clock, wall = time.thread_time_ns, time.perf_counter_ns
    began, began_wall = clock(), wall()
    while not stop.is_set():
        start = clock()
        parse(parse_n)
        middle = clock()
        render(render_n)
        end = clock()
        counters.parse += middle - start
        counters.render += end - middle
        waited = wall()
        try:
            wait(state)
        except OSError:  # Its helper is gone: the workers are stopping.
            return
        counters.wait_wall += wall() - waited
        counters.cpu = clock() - began
        counters.wall = wall() - began_wall


class Workers:
    """Worker threads named worker-KIND-COPY, with the helper threads that answer their waits,
    and `idle` threads waiting beside them; stop() ends and joins them all."""

    def __init__(self, kinds: list[str], copies: int = 1, idle: int = 0) -> None:
        per_ms = calibrate()
        self._stop = threading.Event()
        self._helpers: list[threading.Thread] = []
        self.counters: dict[str, Counters] = {}
        self.threads: dict[str, threading.Thread] = {}
        for kind in kinds:
            for copy in range(copies):
                state = start_wait(kind, self._stop, self._helpers)
                name = f"worker-{kind}-{copy}"
                self.counters[name] = Counters()
                self.threads[name] = threading.Thread(
                    target=worker,
                    args=(kind, state, per_ms, self._stop, self.counters[name]),
                    name=name,
                )
        idlers = [
            threading.Thread(target=self._stop.wait, name=f"idle-{i}", daemon=True)
            for i in range(idle)
        ]
        for thread in self._helpers + idlers + list(self.threads.values()):
            thread.start()

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {name: counters.snapshot() for name, counters in self.counters.items()}

    def since(self, base: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        now = self.snapshot()
        return {name: {k: now[name][k] - base[name][k] for k in now[name]} for name in now}

    def stop(self) -> None:
        self._stop.set()
        for thread in self._helpers + list(self.threads.values()):
            thread.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waits", default=",".join(WAITS))
    parser.add_argument("--copies", type=int, default=1, help="worker threads per kind of wait")
    parser.add_argument("--idle", type=int, default=0, help="idle threads beside the workers")
    parser.add_argument("--max-seconds", type=float, default=180)
    parser.add_argument("--hz", type=int, default=100, help="the CPU profile's sampling rate")
    args = parser.parse_args()
    kinds = [k for k in args.waits.split(",") if k]
    unknown = set(kinds) - set(WAITS)
    if unknown:
        parser.error(f"unknown waits {sorted(unknown)}; choose from {WAITS}")

    pyprofiler.set_cpu_profile_rate(args.hz)
    workers = Workers(kinds, args.copies, args.idle)
    server = pyprofiler.serve(port=0, max_seconds=120)
    idents = {name: thread.ident for name, thread in workers.threads.items()}
    try:
        obey(json.dumps({"url": server.url, "threads": idents}), workers.snapshot, args.max_seconds)
    finally:
        workers.stop()
        server.stop()


def obey(announcement: str, snapshot, max_seconds: float) -> None:
    """Print `announcement`, then obey stdin: "mark" starts a window, "report" prints what
    snapshot() counted since (the difference of two {name: number} or {name: {name: number}}
    dicts), "quit" or EOF returns. A watchdog ends the process after `max_seconds` so that it
    never outlives a parent that stopped talking."""
    watchdog = threading.Timer(max_seconds, os._exit, args=(3,))
    watchdog.daemon = True
    watchdog.start()

    def since(now, base):
        return {
            k: since(v, base[k]) if isinstance(v, dict) else v - base[k] for k, v in now.items()
        }

    print(announcement, flush=True)
    base = snapshot()
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "mark":
                base = snapshot()
            elif command == "report":
                print(json.dumps(since(snapshot(), base)), flush=True)
            elif command == "quit":
                break
    finally:
        watchdog.cancel()


if __name__ == "__main__":
    main()
