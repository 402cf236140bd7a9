"""A small busy service with pyprofiler serving /debug/pprof/.

    python examples/quickstart.py            # serves http://127.0.0.1:6060/debug/pprof/
    go tool pprof -top 'http://127.0.0.1:6060/debug/pprof/profile?seconds=10'
"""

import argparse
import hashlib
import threading
import time

import pyprofiler


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def render_report(rows: int) -> str:
    return "\n".join(f"{i:6d} {i * i:12d}" for i in range(rows))


def handle_request() -> None:
    render_report(20_000)
    checksum(b"x" * 200_000)
    time.sleep(0.005)  # Waiting on a "database": visible in /wall, not in /profile.


def worker(stop: threading.Event) -> None:
    while not stop.is_set():
        handle_request()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=6060)
    parser.add_argument("--duration", type=float, default=None, help="exit after this many s")
    args = parser.parse_args()

    server = pyprofiler.serve(port=args.port)
    print(f"serving {server.url}", flush=True)
    print(f"try: go tool pprof -top '{server.url}profile?seconds=10'", flush=True)
    stop = threading.Event()
    workers = [threading.Thread(target=worker, args=(stop,), name=f"worker-{i}") for i in range(2)]
    for thread in workers:
        thread.start()
    try:
        stop.wait(args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        for thread in workers:
            thread.join()
        server.stop()


if __name__ == "__main__":
    main()
