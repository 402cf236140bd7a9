"""A Celery worker with a prefork pool, fed by a producer thread in the same program through
kombu's in-memory broker, so that it needs no broker server (a deployment's Redis or RabbitMQ
changes nothing below). Each task summarizes a batch of sensor readings (the CPU work, in
`summarize_readings`).

Unmodified, under the runner (the pool's processes are forked from the worker, and the port
answers for all of them):

    python -m pyprofiler run --port 6060 examples/celery_app.py

Or with serve() at import, in the worker's main process before it forks its pool:

    PPROF_PORT=6060 python examples/celery_app.py

Then, while it runs:

    go tool pprof -top 'http://127.0.0.1:6060/debug/pprof/profile?seconds=10'
"""

import argparse
import os
import threading

from celery import Celery
from celery.signals import worker_ready

import pyprofiler

# This program's own switch for serving at import; under `python -m pyprofiler run`, leave it
# unset.
if os.environ.get("PPROF_PORT"):
    pyprofiler.serve(port=int(os.environ["PPROF_PORT"]))

TASKS_PER_SECOND = 40  # About what two pool processes get through.

app = Celery("celery_app", broker="memory://localhost/")
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
)


@app.task(name="summarize_readings")
def summarize_readings(batch: int) -> float:
    readings = [((batch * 7919 + i * 104729) % 10_007) / 100 for i in range(60_000)]
    mean = sum(readings) / len(readings)
    variance = sum((r - mean) ** 2 for r in readings) / len(readings)
    return round(mean + variance, 3)


def produce(stop: threading.Event) -> None:
    batch = 0
    while not stop.wait(1 / TASKS_PER_SECOND):
        summarize_readings.delay(batch)
        batch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=2, help="processes in the pool")
    args = parser.parse_args()
    stop = threading.Event()

    # Produce only once the pool is up: a thread running while the worker forks its pool
    # would be copied into every child in the middle of whatever it was doing.
    @worker_ready.connect
    def start_producing(**_: object) -> None:
        threading.Thread(target=produce, args=(stop,), name="producer", daemon=True).start()

    print(f"celery example: pid {os.getpid()}", flush=True)
    try:
        app.worker_main(
            [
                "worker",
                "--pool=prefork",
                f"--concurrency={args.concurrency}",
                "--loglevel=WARNING",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        stop.set()


if __name__ == "__main__":
    main()
