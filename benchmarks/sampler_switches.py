"""What the CPU sampler's wake-ups do to the scheduling of a saturated service: the soak's service
(benchmarks/soak_app.py) on CPU 0 under benchmarks/loadgen.go on CPU 1, its CPU recorded with
`perf sched record` with the CPU sampler (start_cpu_profile) off and on, alternating.

    python benchmarks/sampler_switches.py [--rounds 3] [--seconds 3]

Printed for each state: requests/s, the context switches of CPU 0 a second, those the sampler
thread takes part in, and the runs of the service's threads that end asleep within 15 us of
starting (a thread that woke for the GIL and found it held); and, of the wake-ups that took the
CPU from a running thread, the share after which that thread got the CPU back at once. Needs
`go` and `perf` with access to the scheduler's tracepoints. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak import GoLoad, start_app, stop_app, tell  # noqa: E402

from pyprofiler.cpu import LINGER_SECONDS  # noqa: E402

SAMPLER = "pyprofiler-cpu"
SHORT_RUN_S = 15e-6
SWITCH = re.compile(
    r"\] +(\d+\.\d+): +sched:sched_switch: prev_comm=(.*) prev_pid=(\d+) .*prev_state=(\S+)"
    r" ==> next_comm=(.*) next_pid=(\d+) "
)


def switches(recording: Path) -> list[tuple[float, str, int, str, str, int]]:
    """(time, previous comm, previous tid, its state, next comm, next tid) per switch."""
    script = subprocess.run(
        ["perf", "sched", "script", "-i", str(recording)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = []
    for match in SWITCH.finditer(script):
        at, prev_comm, prev_tid, state, next_comm, next_tid = match.groups()
        found.append((float(at), prev_comm, int(prev_tid), state, next_comm, int(next_tid)))
    return found


def measure(recorded: list, seconds: float) -> dict[str, float]:
    short_runs = 0
    preempted = resumed = 0
    for index in range(1, len(recorded)):
        at, prev_comm, prev_tid, state, next_comm, _ = recorded[index]
        started = recorded[index - 1]
        if started[5] == prev_tid and prev_comm != SAMPLER and state == "S":
            short_runs += at - started[0] < SHORT_RUN_S
        if next_comm == SAMPLER and state.startswith("R"):
            preempted += 1
            later = range(index + 1, len(recorded))
            out = next((recorded[k] for k in later if recorded[k][1] == SAMPLER), None)
            resumed += out is not None and out[5] == prev_tid
    return {
        "switches/s": len(recorded) / seconds,
        "the sampler's switches/s": sum(SAMPLER in (s[1], s[4]) for s in recorded) / seconds,
        "runs ending asleep within 15 us, /s": short_runs / seconds,
        "preempting wake-ups/s": preempted / seconds,
        "of those, the thread resumed at once": resumed / preempted if preempted else 0.0,
    }


def record(port: int, go_load: GoLoad, seconds: float, into: Path) -> tuple[dict, float]:
    result: dict = {}
    loading = threading.Thread(target=go_load.run, args=(port, seconds + 1, 1, result))
    loading.start()
    subprocess.run(
        ["perf", "sched", "record", "-q", "-C", "0", "-o", str(into), "--", "sleep", str(seconds)],
        capture_output=True,
        check=True,
    )
    loading.join()
    return measure(switches(into), seconds), result["requests"] / result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    go_load = GoLoad()
    process, started = start_app("--cpu=0", "--new-site-after=1e9")
    figures: dict[bool, list[dict]] = {False: [], True: []}
    rates: dict[bool, list[float]] = {False: [], True: []}
    try:
        tell(process, "profilers off")
        go_load.run(started["port"], 5, 1, {})  # Warm up.
        with tempfile.TemporaryDirectory(prefix="pyprofiler-sched-") as directory:
            for round_ in range(args.rounds):
                for on in (False, True) if round_ % 2 == 0 else (True, False):
                    tell(process, "cpu profile on" if on else "cpu profile off")
                    time.sleep(LINGER_SECONDS + 1)  # Switched off, the sampler lingers.
                    measured, rate = record(
                        started["port"], go_load, args.seconds, Path(directory) / "sched.data"
                    )
                    figures[on].append(measured)
                    rates[on].append(rate)
    finally:
        stop_app(process)
        go_load.close()
    print(f"{'':45} {'sampler off':>12} {'sampler on':>12}")
    print(
        f"{'requests/s':45} {statistics.mean(rates[False]):12.0f}"
        f" {statistics.mean(rates[True]):12.0f}"
    )
    for name in figures[False][0]:
        off = statistics.mean(f[name] for f in figures[False])
        on = statistics.mean(f[name] for f in figures[True])
        print(f"{name:45} {off:12.2f} {on:12.2f}")
    ratio = statistics.mean(rates[True]) / statistics.mean(rates[False])
    print(f"requests/s, on / off: {ratio:.3f} (short windows: the noise is several points)")


if __name__ == "__main__":
    main()
