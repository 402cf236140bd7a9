"""A scrape soak, the way Grafana Alloy and Parca scrape a service: benchmarks/soak_app.py with
every profiler on, under HTTP load, scraped by two scrapers for --seconds (10 minutes by
default), each asking every 15 s for a 14 s CPU profile and for heap, allocs, goroutine, block
and mutex. Then the throughput of the same process with everything on (scrapers included)
against everything off, in alternating ABBA blocks with the app on a CPU of its own, and the RSS
of the same app without pyprofiler under the same load.

    python benchmarks/soak.py                   # about 17 minutes
    python benchmarks/soak.py --seconds 120     # a shorter run (the RSS trend needs 10 min)
    python benchmarks/soak.py --throughput-only # the on/off throughput blocks alone, ~5 minutes

Printed: failed scrapes, the app's RSS each minute and its growth over the second half of the
soak (up to the late allocation site, which keeps 2.5 MB on purpose), the profiler's own
memory, whether that site, first used at 90 % of the soak, is in the heap profile under its own
name, and the throughput ratio. A measurement, not a test: exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import MachineLoad, Pairs, abba, figure, load, spread  # noqa: E402

from pyprofiler import proto  # noqa: E402

APP = Path(__file__).with_name("soak_app.py")
PERIOD = 15.0
CPU_SECONDS = 14
INSTANT = ("heap", "allocs", "goroutine", "block", "mutex")


def start_app(*args: str) -> tuple[subprocess.Popen, dict]:
    process = subprocess.Popen(
        [sys.executable, str(APP), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, json.loads(process.stdout.readline())


def stop_app(process: subprocess.Popen) -> None:
    try:
        process.stdin.write("quit\n")
        process.stdin.flush()
        process.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        process.kill()
        process.wait(timeout=10)


def tell(process: subprocess.Popen, command: str) -> None:
    process.stdin.write(command + "\n")
    process.stdin.flush()
    process.stdout.readline()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Scraper:
    """Every PERIOD seconds from `offset`: a CPU profile of CPU_SECONDS, and each instant
    profile, each request in a thread of its own as a scraper's jobs are."""

    def __init__(self, pprof: str, offset: float, stop: threading.Event) -> None:
        self.pprof, self.offset, self.stop = pprof, offset, stop
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._jobs: list[threading.Thread] = []

    def fetch(self, path: str, timeout: float) -> None:
        try:
            with urllib.request.urlopen(self.pprof + path, timeout=timeout) as response:
                body = response.read()
            proto.decode(body)
            with self._lock:
                self.ok += 1
        except (OSError, urllib.error.URLError, ValueError) as exc:
            with self._lock:
                self.failures.append(f"{path}: {exc!r}"[:200])

    def run(self) -> None:
        if self.stop.wait(self.offset):
            return
        while True:
            jobs = [(f"profile?seconds={CPU_SECONDS}", CPU_SECONDS + 30)]
            jobs += [(name, 30) for name in INSTANT]
            for path, timeout in jobs:
                thread = threading.Thread(target=self.fetch, args=(path, timeout), daemon=True)
                thread.start()
                self._jobs.append(thread)
            if self.stop.wait(PERIOD):
                break
        for thread in self._jobs:
            thread.join(timeout=60)


def scrape(pprof: str, stop: threading.Event) -> tuple[list[Scraper], list[threading.Thread]]:
    scrapers = [Scraper(pprof, 0.0, stop), Scraper(pprof, 5.0, stop)]
    threads = [threading.Thread(target=s.run, daemon=True) for s in scrapers]
    for thread in threads:
        thread.start()
    return scrapers, threads


def own_memory(pprof: str) -> dict[str, str]:
    with urllib.request.urlopen(pprof + "heap?debug=1", timeout=30) as response:
        text = response.read().decode()
    stats = {}
    for line in text.splitlines():
        if line.startswith("# ") and " = " in line:
            key, _, value = line[2:].partition(" = ")
            stats[key] = value
    return stats


def soak(seconds: float) -> None:
    process, started = start_app(f"--new-site-after={0.9 * seconds}")
    stop = threading.Event()
    result: dict = {}
    load_thread = threading.Thread(
        target=lambda: result.update(load=load(started["port"], seconds)), daemon=True
    )
    try:
        load_thread.start()
        scrapers, threads = scrape(started["pprof"], stop)
        rss = []
        begin = time.monotonic()
        while time.monotonic() - begin < seconds:
            rss.append((time.monotonic() - begin, rss_bytes(process.pid)))
            time.sleep(5)
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        load_thread.join(timeout=120)
        figure("scrapes answered", f"{sum(s.ok for s in scrapers)}")
        failures = [f for s in scrapers for f in s.failures]
        figure("failed scrapes", f"{len(failures)} {failures[:3]}", "0", not failures)
        # The second half, up to the late allocation site (which keeps 2.5 MB on purpose).
        start, end = _at(rss, seconds / 2), _at(rss, 0.9 * seconds - 5)
        growth = (end - start) / start
        minutes = range(0, int(seconds) + 1, 60)
        figure("app RSS each minute", " ".join(_mb(_at(rss, t))[:-3] for t in minutes) + " MB")
        figure("app RSS growth, second half", f"{100 * growth:+.1f} %", "< 2 %", growth < 0.02)
        stats = own_memory(started["pprof"])
        figure("profiler's heap tables (SamplerBytes)", _mb(int(stats.get("SamplerBytes", 0))))
        figure(
            "heap stacks retired / dropped",
            f"{stats.get('RetiredStacks')} / {stats.get('DroppedStacks')}",
        )
        late = _late_site_in_heap(started["pprof"])
        figure("site first used at 90 % in heap profile", str(late), "yes", late)
        if "load" in result:
            figure("requests/s during the soak", f"{result['load']['requests'] / seconds:.0f}")
        _RSS_WITH[0] = rss[-1][1]
    finally:
        stop.set()
        stop_app(process)


_RSS_WITH = [0]


def _at(rss: list, t: float) -> int:
    return min(rss, key=lambda point: abs(point[0] - t))[1]


def _mb(value: int) -> str:
    return f"{value / 1e6:.0f} MB"


def _late_site_in_heap(pprof: str) -> bool:
    with urllib.request.urlopen(pprof + "heap", timeout=30) as response:
        snapshot = proto.decode(response.read())
    return any(
        frame.function.endswith("late_allocation_site")
        for sample in snapshot.samples
        if sample.values[3] > 0
        for frame in sample.frames
    )


class Block:
    def __init__(self, profiled: bool, rate: float, others: float) -> None:
        self.profiled, self.rate, self.others = profiled, rate, others


def throughput(pairs: int, block_seconds: float) -> None:
    """The app on one CPU, the load generator and the scrapers on the others: what the profilers
    cost the app, not what decoding the scraped profiles costs a 2-core machine (a scraper runs
    on another host). Without a second CPU, all share them."""
    cpus = sorted(os.sched_getaffinity(0))
    pin = [f"--cpu={cpus[0]}"] if len(cpus) > 1 else []
    process, started = start_app("--new-site-after=1e9", *pin)
    if pin:
        os.sched_setaffinity(0, cpus[1:])  # Inherited by the scraper threads and load generator.
    blocks = []
    try:
        load(started["port"], 5)  # Warm up.
        for profiled in abba(pairs):
            tell(process, "profilers on" if profiled else "profilers off")
            stop = threading.Event()
            threads = scrape(started["pprof"], stop)[1] if profiled else []
            machine = MachineLoad(measured=process.pid)
            result = load(started["port"], block_seconds)
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
            blocks.append(Block(profiled, result["requests"] / result["seconds"], 0.0))
            blocks[-1].others = machine.others()
    finally:
        stop_app(process)
    kept = Pairs.of(blocks, lambda block: block.profiled)
    ratios = kept.ratios(lambda block: block.rate)
    figure("throughput pairs (quiet)", f"{kept.total} ({kept.quiet})")
    figure(
        "requests/s, everything on / off",
        spread(ratios),
        ">= 0.95",
        statistics.median(ratios) >= 0.95,
    )


def without_profilers(seconds: float) -> None:
    process, started = start_app("--no-profilers", "--new-site-after=1e9")
    try:
        load(started["port"], seconds)
        rss = rss_bytes(process.pid)
    finally:
        stop_app(process)
    figure("app RSS without pyprofiler, same load", _mb(rss))
    figure("RSS with every profiler on / without", f"{_RSS_WITH[0] / rss:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--block-seconds", type=float, default=30)
    parser.add_argument("--throughput-only", action="store_true")
    args = parser.parse_args()
    if not args.throughput_only:
        print(f"Python {sys.version.split()[0]}, soak {args.seconds:.0f} s", flush=True)
        soak(args.seconds)
        without_profilers(min(args.seconds, 120))
    throughput(args.pairs, args.block_seconds)


if __name__ == "__main__":
    main()
