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

Prints a JSON line {"url": the pyprofiler server's URL, "threads": {"thread name": ident}} naming
the worker threads, then obeys stdin lines: "mark" (start a measuring window), "report" (print the
window's {"thread name": {"parse": ns, "render": ns, "cpu": ns}} as JSON, cpu being the
thread's whole CPU in the window), "quit". Exits by itself after --max-seconds or on stdin EOF.
"""

from __future__ import annotations

import argparse
import json
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
    def __init__(self) -> None:
        self.parse = 0
        self.render = 0
        self.cpu = 0

    def snapshot(self) -> dict[str, int]:
        return {"parse": self.parse, "render": self.render, "cpu": self.cpu}


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
    clock = time.thread_time_ns
    began = clock()
    while not stop.is_set():
        start = clock()
        parse(parse_n)
        middle = clock()
        render(render_n)
        end = clock()
        counters.parse += middle - start
        counters.render += end - middle
        wait(state)
        counters.cpu = clock() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waits", default=",".join(WAITS))
    parser.add_argument("--copies", type=int, default=1, help="worker threads per kind of wait")
    parser.add_argument("--idle", type=int, default=0, help="idle threads beside the workers")
    parser.add_argument("--max-seconds", type=float, default=180)
    parser.add_argument("--hz", type=int, default=100, help="the CPU profile's sampling rate")
    parser.add_argument("--no-serve", action="store_true", help="no pyprofiler server")
    args = parser.parse_args()
    kinds = [k for k in args.waits.split(",") if k]
    unknown = set(kinds) - set(WAITS)
    if unknown:
        parser.error(f"unknown waits {sorted(unknown)}; choose from {WAITS}")

    pyprofiler.set_cpu_profile_rate(args.hz)
    per_ms = calibrate()
    stop = threading.Event()
    helpers: list[threading.Thread] = []
    workers: dict[str, tuple[threading.Thread, Counters]] = {}
    for kind in kinds:
        for copy in range(args.copies):
            state = start_wait(kind, stop, helpers)
            counters = Counters()
            name = f"worker-{kind}-{copy}"
            thread = threading.Thread(
                target=worker, args=(kind, state, per_ms, stop, counters), name=name
            )
            workers[name] = (thread, counters)
    idle = [
        threading.Thread(target=stop.wait, name=f"idle-{i}", daemon=True)
        for i in range(args.idle)
    ]
    server = None if args.no_serve else pyprofiler.serve(port=0, max_seconds=120)
    for thread in helpers + idle + [t for t, _ in workers.values()]:
        thread.start()
    timer = threading.Timer(args.max_seconds, stop.set)
    timer.daemon = True
    timer.start()
    idents = {name: thread.ident for name, (thread, _) in workers.items()}
    print(json.dumps({"url": server.url if server else None, "threads": idents}), flush=True)
    base = {name: c.snapshot() for name, (_, c) in workers.items()}
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "mark":
                base = {name: c.snapshot() for name, (_, c) in workers.items()}
            elif command == "report":
                report = {}
                for name, (_, counters) in workers.items():
                    now = counters.snapshot()
                    report[name] = {k: now[k] - base[name][k] for k in now}
                print(json.dumps(report), flush=True)
            elif command == "quit" or stop.is_set():
                break
    finally:
        timer.cancel()
        stop.set()
        for thread in helpers + [t for t, _ in workers.values()]:
            thread.join(timeout=10)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
