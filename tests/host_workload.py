"""A host application for the tests of what clients can and cannot do to it: it serves
pyprofiler (settings from argv as JSON), keeps a ticker thread that measures how long it is
ever kept from running, and answers commands on stdin:

    stats -> `stats <longest hold-up ms> <longest tick gap ms> <VmHWM kB> <VmRSS kB> <threads>
              <pyprofiler threads>`
    reset -> `reset` (the longest gaps and the memory high-water mark start again)

A tick's gap is how much later than asked for the ticker ran; its hold-up is that gap less the
time the ticker waited for a CPU on the kernel's run queue (`/proc/thread-self/schedstat`),
which on a machine busy with other processes is theirs, not this process's: what is left is
the time something in this process (the GIL) kept the ticker from running.

It prints `ready <port>` once serving, and exits when stdin closes.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import pyprofiler

TICK = 0.01

longest = {"hold_up": 0.0, "gap": 0.0}


def run_queue_wait() -> float:
    """Seconds this thread has waited on the run queue for a CPU, since it started."""
    with open("/proc/thread-self/schedstat") as file:
        return int(file.read().split()[1]) / 1e9


def ticker() -> None:
    last, waited = time.monotonic(), run_queue_wait()
    while True:
        time.sleep(TICK)
        now, now_waited = time.monotonic(), run_queue_wait()
        gap = now - last - TICK
        longest["gap"] = max(longest["gap"], gap)
        longest["hold_up"] = max(longest["hold_up"], gap - (now_waited - waited))
        last, waited = now, now_waited


def status(field: str) -> str:
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return line.split()[1]
    return "0"


def main() -> None:
    settings = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    server = pyprofiler.serve(host="127.0.0.1", port=0, **settings)
    threading.Thread(target=ticker, name="host-ticker", daemon=True).start()
    print("ready", server.port, flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "stats":
            threads = threading.enumerate()
            own = sum(t.name.startswith("pyprofiler-") for t in threads)
            print(
                "stats",
                round(longest["hold_up"] * 1000, 1),
                round(longest["gap"] * 1000, 1),
                status("VmHWM"),
                status("VmRSS"),
                len(threads),
                own,
                flush=True,
            )
        elif command == "reset":
            longest.update(hold_up=0.0, gap=0.0)
            with open("/proc/self/clear_refs", "w") as file:
                file.write("5")  # Resets VmHWM to the current RSS.
            print("reset", flush=True)
    server.stop()


if __name__ == "__main__":
    main()
