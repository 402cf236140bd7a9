"""Apps for the worker-group deployment tests (tests/test_group.py): each serves pyprofiler at
import on the port in GROUP_APP_PPROF_PORT, as a user's app would, so that every worker of the
server that imports it calls serve() on the same port.

- `wsgi_app` (gunicorn): GET /work does a few milliseconds of CPU work in `handle_work`.
- `asgi_app` (uvicorn, FastAPI): GET /slow awaits an asyncio.sleep in `slow_request`.
"""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI

import pyprofiler

WORK_ITERATIONS = 40_000  # About 3 ms of pure Python per request.

server = pyprofiler.serve(port=int(os.environ["GROUP_APP_PPROF_PORT"]))


def handle_work() -> int:
    total = 0
    for i in range(WORK_ITERATIONS):
        total += i * i % 7
    return total


def wsgi_app(environ: dict, start_response) -> list[bytes]:
    if environ.get("PATH_INFO") == "/work":
        body = f"{os.getpid()} {handle_work()}\n".encode()
    else:
        body = f"{os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


asgi_app = FastAPI()


@asgi_app.get("/slow")
async def slow_request(seconds: float = 20.0) -> dict:
    await asyncio.sleep(min(seconds, 60.0))
    return {"pid": os.getpid()}
