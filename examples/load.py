"""Put a local service under load: a few threads send GET requests to one URL for a while.

    python examples/load.py http://127.0.0.1:8000/invoice/42 --seconds 60 --concurrency 4
"""

import argparse
import threading
import time
import urllib.error
import urllib.request
from collections import Counter


def send_requests(url: str, deadline: float, statuses: Counter, lock: threading.Lock) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        except OSError:  # Not listening yet, or a worker restarting: try again shortly.
            status = "no answer"
            time.sleep(0.1)
        with lock:
            statuses[status] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
    statuses: Counter = Counter()
    lock = threading.Lock()
    threads = [
        threading.Thread(target=send_requests, args=(args.url, deadline, statuses, lock))
        for _ in range(args.concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(", ".join(f"{status}: {count}" for status, count in sorted(statuses.items(), key=str)))


if __name__ == "__main__":
    main()
