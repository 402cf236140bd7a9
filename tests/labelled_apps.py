"""A Flask app (threaded server) or a FastAPI app (uvicorn) with its requests labelled by
pyprofiler.label_requests, run as a script for the request-labels tests.

    python tests/labelled_apps.py flask|fastapi

Routes: `/users/<id>` waits on a "database" (wait_for_database, a 20 ms sleep) and
`/reports/<name>` renders (render_report, ~5 ms of CPU: well above the framework's own cost
per request). pyprofiler serves on its own port.
Prints a JSON line {"app": the app's URL, "pprof": pyprofiler's URL}; exits on stdin EOF.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time

import pyprofiler

DATABASE_SECONDS = 0.02


def wait_for_database() -> None:
    time.sleep(DATABASE_SECONDS)


def render_report(name: str) -> str:
    total = 0
    for i in range(100_000):
        total += i * i & 1023
    return f"{name}: {total}"


def flask_server() -> tuple[str, threading.Thread]:
    from flask import Flask
    from werkzeug.serving import make_server

    app = Flask("labelled")

    @app.route("/users/<int:user_id>")
    def user(user_id: int) -> str:
        wait_for_database()
        return str(user_id)

    @app.route("/reports/<name>")
    def report(name: str) -> str:
        return render_report(name)

    pyprofiler.label_requests(app)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # Not a line per request.
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="flask-server", daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.server_port}", thread


def fastapi_server() -> tuple[str, threading.Thread]:
    import uvicorn
    from fastapi import APIRouter, FastAPI

    app = FastAPI()
    router = APIRouter()

    @router.get("/users/{user_id}")
    def user(user_id: int) -> int:  # A sync endpoint: run in the threadpool, as it blocks.
        wait_for_database()
        return user_id

    @router.get("/reports/{name}")
    async def report(name: str) -> str:
        return render_report(name)

    app.include_router(router, prefix="/api")
    pyprofiler.label_requests(app)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name="uvicorn", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/api", thread


def main() -> None:
    url, _ = (flask_server if sys.argv[1] == "flask" else fastapi_server)()
    profiler = pyprofiler.serve(port=0)
    print(json.dumps({"app": url, "pprof": profiler.url}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
