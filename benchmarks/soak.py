"""A scrape soak, the way Grafana Alloy and Parca scrape a service: benchmarks/soak_app.py with
every profiler on, under HTTP load, scraped by two scrapers for --seconds (10 minutes by
default), each asking every 15 s for a 14 s CPU profile and for heap, allocs, goroutine, block
and mutex. Then the throughput with everything on (scrapers included) against everything off,
twice: in alternating ABBA blocks of one copy of the app on a CPU of its own, and crossed, two
copies at once, each on a CPU of its own, with the roles swapped each phase (the load
generators of that figure are benchmarks/loadgen.go, built with `go build`); and the RSS of the
same app without pyprofiler under the same load.

    python benchmarks/soak.py                   # about 22 minutes
    python benchmarks/soak.py --seconds 120     # a shorter run (the RSS trend needs 10 min)
    python benchmarks/soak.py --throughput-only # the two throughput figures alone, ~10 minutes
    python benchmarks/soak.py --split           # the crossed figure of each part, ~25 minutes

Printed: failed scrapes, the app's RSS each minute and its growth over the second half of the
soak (up to the late allocation site, which keeps 2.5 MB on purpose), the profiler's own
memory, whether that site, first used at 90 % of the soak, is in the heap profile under its own
name, the throughput ratios, and (crossed) the context switches the switched-on copy adds. A
measurement, not a test: exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (  # noqa: E402
    MachineLoad,
    Pairs,
    abba,
    figure,
    load,
    process_cpu_seconds,
    spread,
    switches_since,
    thread_context_switches,
)

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
    """Every PERIOD seconds from `offset`: each of `paths` (by default a CPU profile of
    CPU_SECONDS and each instant profile), each request in a thread of its own as a scraper's
    jobs are."""

    def __init__(
        self, pprof: str, offset: float, stop: threading.Event, decode: bool, paths: tuple
    ) -> None:
        self.pprof, self.offset, self.stop, self.decode = pprof, offset, stop, decode
        self.paths = paths
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._jobs: list[threading.Thread] = []

    def fetch(self, path: str, timeout: float) -> None:
        try:
            with urllib.request.urlopen(self.pprof + path, timeout=timeout) as response:
                body = response.read()
            if self.decode:
                proto.decode(body)
            elif body[:2] != b"\x1f\x8b":
                raise ValueError("not a gzipped profile")
            with self._lock:
                self.ok += 1
        except (OSError, urllib.error.URLError, ValueError) as exc:
            with self._lock:
                self.failures.append(f"{path}: {exc!r}"[:200])

    def run(self) -> None:
        if self.stop.wait(self.offset):
            return
        while True:
            for path in self.paths:
                timeout = CPU_SECONDS + 30 if path.startswith("profile") else 30
                thread = threading.Thread(target=self.fetch, args=(path, timeout), daemon=True)
                thread.start()
                self._jobs.append(thread)
            if self.stop.wait(PERIOD):
                break
        for thread in self._jobs:
            thread.join(timeout=60)


SCRAPED = (f"profile?seconds={CPU_SECONDS}", *INSTANT)


def scrape(
    pprof: str, stop: threading.Event, decode: bool = True, paths: tuple = SCRAPED
) -> tuple[list[Scraper], list[threading.Thread]]:
    scrapers = [Scraper(pprof, offset, stop, decode, paths) for offset in (0.0, 5.0)]
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
    def __init__(self, profiled: bool, rate: float, app_cpus: float, others: float) -> None:
        self.profiled, self.rate, self.app_cpus, self.others = profiled, rate, app_cpus, others


def throughput(pairs: int, block_seconds: float) -> None:
    """The app on one CPU, the load generator and the scrapers on the others: what the profilers
    cost the app, not what decoding the scraped profiles costs a 2-core machine (a scraper runs
    on another host). Without a second CPU, all share them. A block of PERIOD seconds holds one
    scrape cycle of both scrapers, as every PERIOD of a long soak does."""
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
            cpu_before = process_cpu_seconds(process.pid)
            result = load(started["port"], block_seconds)
            app_cpus = (process_cpu_seconds(process.pid) - cpu_before) / result["seconds"]
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
            blocks.append(
                Block(profiled, result["requests"] / result["seconds"], app_cpus, machine.others())
            )
            print(
                f"    {'on ' if profiled else 'off'} {blocks[-1].rate:7.0f} requests/s, the app"
                f" on {app_cpus:.2f} CPUs, others on {blocks[-1].others:.2f}",
                flush=True,
            )
    finally:
        stop_app(process)
        os.sched_setaffinity(0, cpus)
    kept = Pairs.of(blocks, lambda block: block.profiled)
    ratios = kept.ratios(lambda block: block.rate)
    figure("throughput pairs (quiet)", f"{kept.total} ({kept.quiet})")
    figure(
        "requests/s, everything on / off",
        spread(ratios),
        ">= 0.95",
        statistics.median(ratios) >= 0.95,
    )
    # Where the app did not get its whole CPU (another process on it, the VM's host), requests/s
    # fall with it: requests per CPU-second of the app tell that apart from what it costs.
    figure(
        "requests per app CPU-second, on / off",
        spread(kept.ratios(lambda block: block.rate / max(block.app_cpus, 1e-9))),
    )


class GoLoad:
    """benchmarks/loadgen.go, built once into a temporary directory: the crossed figure's load
    generators share the apps' CPUs, where loadgen.py would take a third of each."""

    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="pyprofiler-loadgen-")
        self.binary = str(Path(self._directory.name) / "loadgen")
        source = Path(__file__).with_name("loadgen.go")
        subprocess.run(["go", "build", "-o", self.binary, str(source)], check=True)

    def run(self, port: int, seconds: float, cpu: int, result: dict) -> None:
        result.update(load(port, seconds, generator=["taskset", "-c", str(cpu), self.binary]))

    def close(self) -> None:
        self._directory.cleanup()


@dataclass(frozen=True)
class Part:
    """What the crossed figure switches on in one copy: the soak's rates, start_cpu_profile's
    sampler (no HTTP), and what the scrapers ask for."""

    rates: bool = False
    cpu_profile: bool = False
    scraped: tuple = ()


EVERYTHING = Part(rates=True, scraped=SCRAPED)
# --split: what each part costs alone, then everything.
PARTS = {
    "the CPU sampler alone (start_cpu_profile, no HTTP)": Part(cpu_profile=True),
    "CPU profiles scraped, rates 0": Part(scraped=SCRAPED[:1]),
    "the instant profiles scraped, rates 0": Part(scraped=INSTANT),
    "the rates alone (heap 512 KiB, block 1, mutex 1)": Part(rates=True),
    "everything, scraped": EVERYTHING,
}


def switch(process: subprocess.Popen, part: Part, on: bool) -> None:
    tell(process, "profilers on" if on and part.rates else "profilers off")
    if part.cpu_profile:
        tell(process, "cpu profile on" if on else "cpu profile off")


def crossed(phases: int, phase_seconds: float, part: Part = EVERYTHING, label: str = "") -> None:
    """Two copies of the app at once, each on a CPU of its own: one with everything on and
    scraped, the other off, the roles swapped each phase. Each copy's load generator runs on the
    other copy's CPU, so the two CPUs carry the same things. Both copies see the same drift of
    the machine's speed, which on this VM moves requests/s by up to 20 % between consecutive
    blocks of the ABBA figure; the geometric mean over an even number of phases cancels what
    differs between the two CPUs. Each app gets the CPU less its neighbour's load generator
    (~0.87 of it here), so the costs fixed in time (the sampler's ticks, building the scraped
    profiles) weigh a little more than for an app with a whole CPU. The scrapers read each
    answer whole without decoding it: decoding is a scraper's work, on another host."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("    the crossed figure needs two CPUs")
        return
    if label:
        print(label, flush=True)
    go_load = GoLoad()
    apps = [start_app("--new-site-after=1e9", f"--cpu={cpu}") for cpu in cpus[:2]]
    ratios, per_cpu, more_switches = [], [], []
    try:
        for index, (_, started) in enumerate(apps):
            go_load.run(started["port"], 5, cpus[1 - index], {})  # Warm up.
        for phase in range(phases):
            on = phase % 2
            for index, (process, _) in enumerate(apps):
                switch(process, part, index == on)
            stop = threading.Event()
            scrapers = scrape(apps[on][1]["pprof"], stop, False, part.scraped)[1]
            cpu_before = [process_cpu_seconds(process.pid) for process, _ in apps]
            switches_before = [thread_context_switches(process.pid) for process, _ in apps]
            results: list[dict] = [{}, {}]
            loads = [
                threading.Thread(
                    target=go_load.run,
                    args=(started["port"], phase_seconds, cpus[1 - index], results[index]),
                )
                for index, (_, started) in enumerate(apps)
            ]
            for thread in loads:
                thread.start()
            for thread in loads:
                thread.join()
            cpu = [process_cpu_seconds(p.pid) - c for (p, _), c in zip(apps, cpu_before)]
            switches = [
                switches_since(b, p.pid) / phase_seconds for (p, _), b in zip(apps, switches_before)
            ]
            more_switches.append(switches[on] - switches[1 - on])
            stop.set()
            for thread in scrapers:
                thread.join(timeout=120)
            rate = [result["requests"] / result["seconds"] for result in results]
            ratios.append(rate[on] / rate[1 - on])
            per_cpu.append(ratios[-1] * cpu[1 - on] / cpu[on])
            print(
                f"    copy {on} on: {rate[on]:5.0f} requests/s on {cpu[on]:.1f} CPU-s,"
                f" {switches[on]:5.0f} switches/s; copy {1 - on} off: {rate[1 - on]:5.0f} on"
                f" {cpu[1 - on]:.1f}, {switches[1 - on]:5.0f}",
                flush=True,
            )
    finally:
        for process, _ in apps:
            stop_app(process)
        go_load.close()
    everything = part == EVERYTHING
    figure(
        "crossed: requests/s, on / off",
        f"{statistics.geometric_mean(ratios):.3f} ({spread(ratios)})",
        ">= 0.95" if everything else "",
        statistics.geometric_mean(ratios) >= 0.95 if everything else None,
    )
    figure(
        "crossed: per app CPU-second, on / off",
        f"{statistics.geometric_mean(per_cpu):.3f} ({spread(per_cpu)})",
    )
    figure(
        "crossed: the app's context switches/s, on - off",
        f"{statistics.mean(more_switches):+.0f} ({spread(more_switches, '+.0f')})",
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
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--block-seconds", type=float, default=PERIOD)
    parser.add_argument("--phases", type=int, default=8)
    parser.add_argument("--phase-seconds", type=float, default=2 * PERIOD)
    parser.add_argument("--throughput-only", action="store_true")
    parser.add_argument(
        "--split", action="store_true", help="the crossed figure of each part alone, nothing else"
    )
    args = parser.parse_args()
    if args.split:
        for label, part in PARTS.items():
            crossed(args.phases, args.phase_seconds, part, label)
        return
    if not args.throughput_only:
        print(f"Python {sys.version.split()[0]}, soak {args.seconds:.0f} s", flush=True)
        soak(args.seconds)
        without_profilers(min(args.seconds, 120))
    throughput(args.pairs, args.block_seconds)
    crossed(args.phases, args.phase_seconds)


if __name__ == "__main__":
    main()
