"""A program that knows nothing of pyprofiler, for tests/test_runner.py to run under
`python -m pyprofiler run`. It prints `pid N`, then `ready`, then computes in
`compute_checksums` for --seconds (until killed, by default), then exits with --exit-code.

    --contend        two threads also take turns on one lock (block and mutex profiles)
    --spawn-child    also run a child Python process, which prints `child done`
    --report         print what the bootstrap left behind (sitecustomize, sys.path)
    --exit-on-sigterm N   a SIGTERM handler of the program's own that exits with N
"""

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time


def compute_checksums(rounds: int) -> str:
    digest = b""
    for i in range(rounds):
        digest = hashlib.sha256(digest + i.to_bytes(4, "little")).digest()
        sum(range(500))
    return digest.hex()


def hold_and_wait(lock: threading.Lock, deadline: float) -> None:
    while time.monotonic() < deadline:
        with lock:
            time.sleep(0.002)


def report() -> None:
    import sitecustomize  # noqa: F401 - whichever one the process ended up with

    print("sitecustomize", getattr(sitecustomize, "MARK", None), flush=True)
    print("hidden ran", os.environ.get("HIDDEN_SITECUSTOMIZE_RAN"), flush=True)
    bootstrap_on_path = any(p.endswith(os.path.join("pyprofiler", "_bootstrap")) for p in sys.path)
    print("bootstrap on sys.path", bootstrap_on_path, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--contend", action="store_true")
    parser.add_argument("--spawn-child", action="store_true")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--exit-on-sigterm", type=int, default=None)
    args = parser.parse_args()
    if args.exit_on_sigterm is not None:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(args.exit_on_sigterm))
    print(f"pid {os.getpid()}", flush=True)
    if args.report:
        report()
    if args.spawn_child:
        code = "import sys; print('child done', flush=True)"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    deadline = time.monotonic() + args.seconds
    threads = []
    if args.contend:
        lock = threading.Lock()
        threads = [
            threading.Thread(target=hold_and_wait, args=(lock, deadline), name=f"contender-{i}")
            for i in range(2)
        ]
        for thread in threads:
            thread.start()
    print("ready", flush=True)
    while time.monotonic() < deadline:
        compute_checksums(2_000)
    for thread in threads:
        thread.join()
    sys.exit(args.exit_code)


if __name__ == "__main__":
    main()
