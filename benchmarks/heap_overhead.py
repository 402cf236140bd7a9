"""Overhead of the heap profiler's allocation hooks on an allocation-heavy pure-Python workload,
against the bars in docs/performance.md.

    python benchmarks/heap_overhead.py            # full run, under 3 minutes
    python benchmarks/heap_overhead.py --quick    # smoke run, about 30 seconds

The workload builds and discards dicts, lists, strings, tuples and small class instances, keeping
the last few hundred of them alive, as request handling does. Short blocks of it (~6 ms)
alternate inside this one process in ABBA groups (A B B A) between "no hook"
(set_mem_profile_rate(0)) and one configuration, the four blocks of a group doing the same
amount of work; each adjacent A/B pair gives a ratio, and the median ratio is reported. The
groups of all configurations are shuffled together, so that a slow spell of the machine is
shared among them, and their sizes vary at random, so that nothing periodic in the interpreter
(the cyclic GC) falls into step with A and B. Blocks are timed with this thread's CPU clock
(time.thread_time_ns): the hooks run in the allocating thread, and time the thread spends
preempted does not count.

Configurations: rate 0 after the hooks were installed and removed (a sanity check: it must be
1.00), the default rate (512 KiB), 64 KiB, and tracemalloc with 1 and with 64 frames, for
comparison. The per-allocation figure is (B - A) / allocations per block, the allocations being
counted once at rate 1 (which samples every one of them).

Prints one line per configuration with PASS/FAIL against its bar, and exits 0 whatever the
figures: it is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Callable

import pyprofiler
from pyprofiler.samplers.native import native as _native

KIB = 1024


@dataclass(frozen=True)
class Plan:
    groups: int  # ABBA groups (two A/B pairs each) for each rate configuration
    tracemalloc_groups: tuple[int, int]  # for tracemalloc with 1 and with 64 frames
    block_seconds: float  # CPU time of one unhooked block, on average


# Many short blocks rather than a few long ones. On the shared 2-core VM this was written on, the
# CPU time of identical blocks jumps by 10-50 % now and then (other tenants), so that the ratio
# of two adjacent 100 ms blocks has a standard deviation of ~15 %; with ~6 ms blocks the ratios'
# median absolute deviation is ~2 %, and the median of 1 600 of them is good to ~0.2 %.
# tracemalloc has no bar and costs 10-60 times as much: fewer groups.
FULL = Plan(groups=800, tracemalloc_groups=(60, 15), block_seconds=0.006)
QUICK = Plan(groups=150, tracemalloc_groups=(12, 4), block_seconds=0.006)


# ---- the workload -------------------------------------------------------------------------------


class Item:
    def __init__(self, key: int, payload: dict) -> None:
        self.key = key
        self.payload = payload
        self.label = f"item-{key}"


def work(rounds: int, ring: list) -> int:
    """`rounds` rounds of building objects; the last len(ring) rounds' objects stay alive."""
    total = 0
    size = len(ring)
    for i in range(rounds):
        tags = [str(j) for j in range(i % 8 + 2)]
        payload = {"id": i, "name": "name-" + str(i), "tags": tags, "pair": (i, i + 1)}
        item = Item(i, payload)
        text = ",".join(tags) + item.label
        ring[i % size] = (item, text.upper(), list(payload.items()))
        total += len(text)
    return total


# ---- configurations ---------------------------------------------------------------------------


@dataclass
class Config:
    name: str
    setup: Callable[[], None]
    teardown: Callable[[], None]
    bar: str
    passed: Callable[[float], bool] | None
    groups: int
    ratios: list[float] = field(default_factory=list)
    extra_ns_per_allocation: list[float] = field(default_factory=list)
    samples: int = 0
    sampler: bool = True  # pyprofiler's own sampler (samples are counted)


def set_rate(rate: int) -> Callable[[], None]:
    return lambda: pyprofiler.set_mem_profile_rate(rate)


def install_and_remove() -> None:
    pyprofiler.set_mem_profile_rate(4 * KIB)
    pyprofiler.set_mem_profile_rate(0)


def configurations(plan: Plan) -> list[Config]:
    # tracemalloc is started only while pyprofiler's hooks are removed (rate 0) and stopped
    # before they come back, so that each restores the allocator it found.
    one, many = plan.tracemalloc_groups
    return [
        Config(
            "rate 0 (hooks installed, then removed)",
            install_and_remove,
            set_rate(0),
            "0.99 - 1.01",
            lambda r: 0.99 <= r <= 1.01,
            plan.groups,
        ),
        Config(
            "rate 512 KiB (default)",
            set_rate(512 * KIB),
            set_rate(0),
            "<= 1.03",
            lambda r: r <= 1.03,
            plan.groups,
        ),
        Config(
            "rate 64 KiB",
            set_rate(64 * KIB),
            set_rate(0),
            "<= 1.10",
            lambda r: r <= 1.10,
            plan.groups,
        ),
        Config(
            "tracemalloc, 1 frame",
            lambda: tracemalloc.start(1),
            tracemalloc.stop,
            "",
            None,
            one,
            sampler=False,
        ),  # fmt: skip
        Config(
            "tracemalloc, 64 frames",
            lambda: tracemalloc.start(64),
            tracemalloc.stop,
            "",
            None,
            many,
            sampler=False,
        ),  # fmt: skip
    ]


# ---- measuring --------------------------------------------------------------------------------


def timed_block(rounds: int, ring: list) -> int:
    start = time.thread_time_ns()
    work(rounds, ring)
    return time.thread_time_ns() - start


def calibrate(seconds: float, ring: list) -> int:
    """Rounds that take about `seconds` of this thread's CPU time without hooks (the median of
    a few tries: single blocks are noisy here)."""
    rounds = 100
    while timed_block(rounds, ring) < 0.02e9:
        rounds *= 2
    per_round = statistics.median(timed_block(rounds, ring) / rounds for _ in range(9))
    return max(1, round(seconds * 1e9 / per_round))


def allocations_per_round(rounds: int, ring: list) -> float:
    """The allocations the hooks see per round, counted at rate 1 (which samples them all)."""
    _native.reset()
    pyprofiler.set_mem_profile_rate(1)
    before = _native.stats()["samples"]
    work(rounds, ring)
    count = _native.stats()["samples"] - before
    pyprofiler.set_mem_profile_rate(0)
    _native.reset()
    return count / rounds


def hooked_block(config: Config, rounds: int, ring: list) -> int:
    config.setup()
    before = _native.stats()["samples"]
    try:
        return timed_block(rounds, ring)
    finally:
        config.samples += _native.stats()["samples"] - before
        config.teardown()


def run_group(config: Config, rounds: int, ring: list, allocations: float) -> None:
    """A B B A with the same amount of work in each block: two pairs, each the ratio of a
    hooked block to the unhooked block next to it."""
    a1 = timed_block(rounds, ring)
    b1 = hooked_block(config, rounds, ring)
    b2 = hooked_block(config, rounds, ring)
    a2 = timed_block(rounds, ring)
    config.ratios += [b1 / a1, b2 / a2]
    config.extra_ns_per_allocation += [
        (b - a) / (rounds * allocations) for a, b in ((a1, b1), (a2, b2))
    ]


def schedule(configs: list[Config], rng: random.Random) -> list[Config]:
    """Every configuration's groups, shuffled together: a slow spell of the machine is shared
    among them rather than landing on one."""
    order = [config for config in configs for _ in range(config.groups)]
    rng.shuffle(order)
    return order


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs, {model}, {platform.system()} {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (~30 s)")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if _native is None:
        sys.exit("pyprofiler's native extension is not built: nothing to measure")

    began = time.monotonic()
    print(f"Python {platform.python_version()} ({sys.executable}); {machine()}")
    pyprofiler.set_mem_profile_rate(0)
    rng = random.Random(20261128)
    ring: list = [None] * 500
    work(20_000, ring)  # warm up: specialization, caches, the ring filled
    rounds = calibrate(plan.block_seconds, ring)
    allocations = allocations_per_round(rounds * 20, ring)
    configs = configurations(plan)
    print(
        f"workload: ~{rounds} rounds (~{plan.block_seconds * 1e3:.0f} ms of CPU unhooked, "
        f"~{rounds * allocations:.0f} allocations) per block; ABBA groups per configuration: "
        + ", ".join(str(config.groups) for config in configs),
        flush=True,
    )

    for config in configs:  # one discarded group each: first blocks pay for warming up
        run_group(config, rounds, ring, allocations)
        config.ratios.clear()
        config.extra_ns_per_allocation.clear()
        config.samples = 0
    _native.reset()
    for config in schedule(configs, rng):
        # Blocks of a random size (the same within a group), so that nothing periodic in the
        # interpreter (the cyclic GC's generations) can fall into step with A and B.
        run_group(config, round(rounds * rng.uniform(0.7, 1.3)), ring, allocations)

    print()
    print(
        f"{'configuration':<40} {'median ratio':>12} {'MAD':>6} {'ns/alloc':>9} "
        f"{'samples':>9}  {'bar':<12} verdict"
    )
    for config in configs:
        ratio = statistics.median(config.ratios)
        mad = statistics.median(abs(r - ratio) for r in config.ratios)
        per_allocation = statistics.median(config.extra_ns_per_allocation)
        verdict = "" if config.passed is None else ("PASS" if config.passed(ratio) else "FAIL")
        samples = config.samples if config.sampler else "-"
        print(
            f"{config.name:<40} {ratio:>12.3f} {mad:>6.3f} {per_allocation:>9.1f} "
            f"{samples:>9}  {config.bar or '(no bar)':<12} {verdict}".rstrip()
        )
    stats = _native.stats()
    print()
    print(
        f"sampler: {stats['own_bytes']} bytes of its own memory (own_bytes), "
        f"{stats['buckets']} buckets, {stats['tracked_blocks']} tracked blocks, "
        f"{stats['samples']} samples taken in the measured blocks"
    )
    print(f"total time: {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
