"""What labels cost (issue 13's bars), measured in one run.

    python benchmarks/labels_cost.py            # about 2 minutes
    python benchmarks/labels_cost.py --quick    # about 30 seconds

1. Entering and leaving a `pyprofiler.labels(route=..., tenant=...)` block, nested in one label
   already in force: the time per block, less that of an empty loop (bar: <= 1 us); and the
   same with the labels object made for each block, as `with pyprofiler.labels(...):` makes it
   (its keyword arguments are most of that).
2. The Flask app of benchmarks/overhead.py (c) on werkzeug's threaded server under 8 keep-alive
   clients in a separate process: requests/s of the app with its requests labelled
   (pyprofiler.label_requests) and a CPU profile running, against the plain app unprofiled, in
   ABBA order (bar: >= 0.97).

The CPU profile's own overhead with labels in use is `python benchmarks/overhead.py --labels`.
Prints one line per figure with PASS/FAIL against its bar, and exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import threading
import time
from dataclasses import dataclass

from common import HTTP_CLIENTS, MachineLoad, Pairs, QuietHandler, abba, figure, load, spread
from werkzeug.serving import make_server
from workloads import create_app

import pyprofiler
from pyprofiler.samplers.stack import CpuSampler

HOST = "127.0.0.1"


def block_cost_ns(blocks: int, inline: bool) -> list[float]:
    """ns per labels block (enter and leave; `inline`: the labels object made for each block
    too, as `with pyprofiler.labels(...):` does), less the loop's own, in 5 repeats."""
    costs = []
    with pyprofiler.labels(service="checkout"):
        for _ in range(5):
            labels = pyprofiler.labels(route="/users/<id>", tenant="acme")
            start = time.perf_counter_ns()
            if inline:
                for _ in range(blocks):
                    with pyprofiler.labels(route="/users/<id>", tenant="acme"):
                        pass
            else:
                for _ in range(blocks):
                    with labels:
                        pass
            labelled = time.perf_counter_ns() - start
            start = time.perf_counter_ns()
            for _ in range(blocks):
                pass
            empty = time.perf_counter_ns() - start
            costs.append((labelled - empty) / blocks)
    return costs


@dataclass
class Block:
    labelled: bool  # The labelled app with a CPU profile running (else the plain app, alone).
    requests_per_second: float
    others: float


def serve(app) -> tuple:
    server = make_server(HOST, 0, app, threaded=True, request_handler=QuietHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return server, thread


def run_block(labelled: bool, ports: dict[bool, int], seconds: float) -> Block:
    machine = MachineLoad()
    sampler = CpuSampler(100) if labelled else None
    if sampler is not None:
        sampler.start()
    result = load(ports[labelled], seconds)
    if sampler is not None:
        sampler.stop()
    return Block(labelled, result["requests"] / result["seconds"], machine.others())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    pairs, seconds, blocks = (2, 2.0, 200_000) if args.quick else (10, 3.0, 1_000_000)
    print(f"Python {platform.python_version()}, {'quick' if args.quick else 'full'} run")

    costs = block_cost_ns(blocks, inline=False)
    figure(
        "labels block, enter + leave",
        spread(costs, ".0f") + " ns",
        "<= 1000 ns",
        statistics.median(costs) <= 1000,
    )
    costs = block_cost_ns(blocks, inline=True)
    figure("the same, labels object made each time", spread(costs, ".0f") + " ns", "(no bar)")

    print(f"Flask app, werkzeug threaded server, {HTTP_CLIENTS} keep-alive clients")
    servers = {labelled: serve(create_app(labelled)) for labelled in (False, True)}
    ports = {labelled: server.server_port for labelled, (server, _) in servers.items()}
    try:
        run_block(False, ports, seconds)  # Warm-up pair: connections, caches, specialization.
        run_block(True, ports, seconds)
        blocks_run = [run_block(labelled, ports, seconds) for labelled in abba(pairs)]
    finally:
        for server, thread in servers.values():
            server.shutdown()
            server.server_close()
            thread.join()
    kept = Pairs.of(blocks_run, lambda block: block.labelled)
    figure("pairs of blocks used", f"all {kept.total}, of which {kept.quiet} quiet")
    rates = kept.ratios(lambda block: block.requests_per_second)
    figure(
        "requests/s, labelled and profiled / plain",
        spread(rates, ".3f"),
        ">= 0.97",
        statistics.median(rates) >= 0.97,
    )
    for name, side in (("plain", kept.baseline()), ("labelled, profiled", kept.measured())):
        rate = statistics.median(block.requests_per_second for block in side)
        figure(f"{name}", f"median {rate:.0f} req/s")


if __name__ == "__main__":
    main()
