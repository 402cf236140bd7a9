"""HTTP load for the Flask workload of benchmarks/overhead.py, run as a separate process so that
it does not compete with the server for its GIL.

`clients` threads send GET /work over keep-alive connections to 127.0.0.1 (never anywhere else)
until `seconds` have passed or `max_requests` requests were sent, whichever comes first, then
print one JSON line: requests completed, errors, seconds, and latency percentiles.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import statistics
import threading
import time

HOST = "127.0.0.1"


def _client(port: int, deadline: float, tickets, latencies: list, errors: list) -> None:
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    # itertools.count's next() is atomic under the GIL: the clients share one request budget.
    while time.monotonic() < deadline and next(tickets) > 0:
        start = time.perf_counter()
        try:
            connection.request("GET", "/work")
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            errors.append(repr(exc))
            connection.close()  # The next request reconnects.
            continue
        if response.status == 200:
            latencies.append(time.perf_counter() - start)
        else:
            errors.append(f"HTTP {response.status}")
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--max-requests", type=int, default=100_000)
    args = parser.parse_args()

    tickets = itertools.count(args.max_requests, -1)
    latencies: list[float] = []
    errors: list[str] = []
    start = time.monotonic()
    deadline = start + args.seconds
    threads = [
        threading.Thread(target=_client, args=(args.port, deadline, tickets, latencies, errors))
        for _ in range(args.clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    percentiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    print(
        json.dumps(
            {
                "requests": len(latencies),
                "errors": len(errors),
                "first_error": errors[0] if errors else None,
                "seconds": elapsed,
                "p50_ms": percentiles[49] * 1000,
                "p99_ms": percentiles[98] * 1000,
            }
        )
    )


if __name__ == "__main__":
    main()
