"""A service whose handler parses, waits on a database over a socket and renders, run as a
script: a threaded Flask app on werkzeug, or an asyncio server doing the same between awaits.

    python tests/service_workload.py --app flask|asyncio [--hz 100]

Every request to GET /work runs parse() (~2.5 ms of CPU), a round trip to a "database" that
answers after 10 ms (a socket recv in a Flask thread, an await in the asyncio handler), then
render() (~7.5 ms); the handler times parse() and render() with its thread's CPU clock. The
database is a thread per connection in this process, named db-N.

Prints a JSON line {"url": pyprofiler's URL, "port": the service's port}, then obeys stdin lines
as request_workload.py does: "mark", "report" (prints {"parse": ns, "render": ns, "wait": ns,
"requests": n} for the window), "quit".
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import queue
import socket
import threading
import time

from request_workload import PARSE_NS, RENDER_NS, WAIT_SECONDS, calibrate, obey, parse, render
from werkzeug.serving import WSGIRequestHandler, make_server

import pyprofiler

HOST = "127.0.0.1"


class Timing:
    """The CPU that parse() and render() used, over all requests, and (Flask) the CPU of the
    database round trip: sending, and taking the GIL back from the other request threads."""

    def __init__(self, per_ms: int) -> None:
        self.parse_n = per_ms * PARSE_NS // 1_000_000
        self.render_n = per_ms * RENDER_NS // 1_000_000
        self._lock = threading.Lock()
        self._totals = {"parse": 0, "render": 0, "wait": 0, "requests": 0}

    def add(self, parse_ns: int, render_ns: int, wait_ns: int = 0) -> None:
        with self._lock:
            self._totals["parse"] += parse_ns
            self._totals["render"] += render_ns
            self._totals["wait"] += wait_ns
            self._totals["requests"] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._totals)


def database(stop: threading.Event) -> int:
    """A server on 127.0.0.1 answering every byte after WAIT_SECONDS; returns its port."""
    listener = socket.create_server((HOST, 0))
    listener.settimeout(0.5)
    names = itertools.count()

    def answer(connection: socket.socket) -> None:
        with connection:
            while not stop.is_set():
                if not connection.recv(1):
                    return
                time.sleep(WAIT_SECONDS)
                connection.sendall(b"!")

    def accept() -> None:
        with listener:
            while not stop.is_set():
                try:
                    connection, _ = listener.accept()
                except socket.timeout:
                    continue
                threading.Thread(
                    target=answer, args=(connection,), name=f"db-{next(names)}", daemon=True
                ).start()

    threading.Thread(target=accept, name="db-accept", daemon=True).start()
    return listener.getsockname()[1]


class QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


def flask_service(timing: Timing, db_port: int):
    from flask import Flask

    app = Flask("service")
    # A pool, as database clients keep one: werkzeug runs each request in a new thread.
    pool: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(16):
        pool.put(socket.create_connection((HOST, db_port)))

    def wait_db() -> None:
        connection = pool.get()
        connection.sendall(b"?")
        connection.recv(1)
        pool.put(connection)

    @app.route("/work")
    def work() -> str:
        clock = time.thread_time_ns
        start = clock()
        parse(timing.parse_n)
        parsed = clock() - start
        start = clock()
        wait_db()
        waited = clock() - start
        start = clock()
        body = str(render(timing.render_n))
        timing.add(parsed, clock() - start, waited)
        return body

    server = make_server(HOST, 0, app, threaded=True, request_handler=QuietHandler)
    threading.Thread(target=server.serve_forever, name="http-server", daemon=True).start()
    return server.server_port


def asyncio_service(timing: Timing, db_port: int) -> int:
    async def wait_db(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"?")
        await writer.drain()
        await reader.readexactly(1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        db_reader, db_writer = await asyncio.open_connection(HOST, db_port)
        clock = time.thread_time_ns
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                if not request.startswith(b"GET /work "):
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                start = clock()
                parse(timing.parse_n)
                parsed = clock() - start
                await wait_db(db_reader, db_writer)
                start = clock()
                body = str(render(timing.render_n)).encode()
                timing.add(parsed, clock() - start)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            db_writer.close()

    started = threading.Event()
    ports: list[int] = []

    async def serve() -> None:
        server = await asyncio.start_server(handle, HOST, 0)
        ports.append(server.sockets[0].getsockname()[1])
        started.set()
        async with server:
            await server.serve_forever()

    threading.Thread(target=asyncio.run, args=(serve(),), name="event-loop", daemon=True).start()
    started.wait(10)
    return ports[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", choices=("flask", "asyncio"), required=True)
    parser.add_argument("--hz", type=int, default=100, help="the CPU profile's sampling rate")
    parser.add_argument("--max-seconds", type=float, default=180)
    args = parser.parse_args()
    pyprofiler.set_cpu_profile_rate(args.hz)
    stop = threading.Event()
    timing = Timing(calibrate())
    db_port = database(stop)
    service = flask_service if args.app == "flask" else asyncio_service
    port = service(timing, db_port)
    profiler = pyprofiler.serve(port=0, max_seconds=120)
    try:
        obey(json.dumps({"url": profiler.url, "port": port}), timing.snapshot, args.max_seconds)
    finally:
        stop.set()
        profiler.stop()


if __name__ == "__main__":
    main()
