"""The /debug/pprof/ routes as an ASGI application, for Starlette, FastAPI, Django's ASGI
handler or any ASGI server: `app.mount("/debug/pprof", pyprofiler.asgi_app())`.

The event loop only moves bytes: every request is answered by the routes (http.py) in a
thread of pyprofiler's own (`pyprofiler-asgi-request`, at most MAX_THREADS at once), so a
profile that runs for 30 s, or one that takes a while to build, never holds the loop up. A
client that disconnects (`http.disconnect`) ends the profile it asked for at once.
"""

from __future__ import annotations

import asyncio
import io
import threading
import weakref
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, Callable
from urllib.parse import quote

from pyprofiler.guards import DEFAULT_MAX_CONCURRENT, Guards, origins
from pyprofiler.http import (
    DEFAULT_MAX_SECONDS,
    MAX_SYMBOL_BODY,
    Reply,
    Request,
    Routes,
    locate,
    not_found,
    redirect,
)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

MAX_THREADS = 32  # Requests answered at once; the others wait on the loop, costing nothing.
_SEND_CHUNK = 64 * 1024


def asgi_app(
    max_seconds: int = DEFAULT_MAX_SECONDS,
    *,
    token: str | None = None,
    allow_origins: Sequence[str] | str | None = None,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
) -> ASGIApp:
    """An ASGI application serving /debug/pprof/: mounted at a prefix (`/debug/pprof`), the
    pages are directly under it; served at the root, under /debug/pprof/. `max_seconds` caps
    the duration of CPU, wall and delta profiles; the guards are serve()'s."""
    guards = Guards(token, origins(allow_origins), max_concurrent)
    return ASGIApp(Routes(max_seconds, guards))


class ASGIApp:
    """The ASGI app of asgi_app()."""

    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        # One semaphore per event loop: an asyncio primitive belongs to the loop it runs on.
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
        self._slots = weakref.WeakKeyDictionary()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        root = scope.get("root_path", "").rstrip("/")
        path = scope.get("path", "")
        if root and path.startswith(root):  # Starlette keeps the mount point in `path`.
            path = path[len(root) :]
        # The WSGI form (bytes as latin-1), which the routes read names from.
        raw_path = path.encode("utf-8", "surrogateescape").decode("latin-1")
        name, needs_slash = locate(raw_path, mounted=bool(root))
        query = scope.get("query_string", b"").decode("latin-1")
        if name is None:
            await _send_reply(send, not_found(), head_only=False)
            return
        if needs_slash:
            location = quote(root + path, safe="/") + "/" + (f"?{query}" if query else "")
            await _send_reply(send, redirect(location), head_only=False)
            return
        headers: dict[str, str] = {}
        for key, value in scope.get("headers", []):
            key_text, value_text = key.decode("latin-1").lower(), value.decode("latin-1")
            headers[key_text] = (
                f"{headers[key_text]}, {value_text}" if key_text in headers else value_text
            )
        request = Request(scope.get("method", "GET"), name, query, headers)
        gone = threading.Event()
        request.hangup = gone
        if request.method == "POST":
            await _read_body(request, receive, gone)
        watcher = asyncio.ensure_future(_watch_disconnect(receive, gone))
        try:
            async with self._slot():
                reply = await _in_thread(self._answer, request)
        finally:
            watcher.cancel()
        if not gone.is_set():
            await _send_reply(send, reply, head_only=request.method == "HEAD")

    def _slot(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        slots = self._slots.get(loop)
        if slots is None:
            slots = self._slots[loop] = asyncio.Semaphore(MAX_THREADS)
        return slots

    def _answer(self, request: Request) -> Reply:
        """In the request's thread: the reply, its body read out in chunks of a size worth
        a send (a profile's body can be thousands of small pieces)."""
        reply = self.routes.answer(request)
        reply.body = _coalesced(reply.body)
        return reply


def _coalesced(body: Iterable[bytes]) -> list[bytes]:
    chunks, pending = [], bytearray()
    for chunk in body:
        pending += chunk
        if len(pending) >= _SEND_CHUNK:
            chunks.append(bytes(pending))
            pending.clear()
    if pending:
        chunks.append(bytes(pending))
    return chunks


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(request: Request, receive: Receive, gone: threading.Event) -> None:
    """The body of a POST, kept if it is within MAX_SYMBOL_BODY; beyond it (by its
    Content-Length, or as it arrives) the routes answer 413 without it."""
    length = request.headers.get("content-length", "")
    if length.isascii() and length.isdigit():
        request.content_length = int(length)
        if request.content_length > MAX_SYMBOL_BODY:
            return
    received, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_SYMBOL_BODY:
            request.content_length = size
            return
        received.append(chunk)
        if not message.get("more_body", False):
            break
    request.body = io.BytesIO(b"".join(received))


async def _watch_disconnect(receive: Receive, gone: threading.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


async def _in_thread(function: Callable[[Request], Reply], request: Request) -> Reply:
    """`function(request)` in a daemon thread of its own, awaited without blocking the loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Reply] = loop.create_future()

    def settle(result: Reply | None, error: BaseException | None) -> None:
        if done.done():  # The request was cancelled meanwhile (the server is stopping).
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = function(request), None
        except BaseException as exc:  # Handed to the awaiting task, never lost in the thread.
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # The loop has closed: nobody waits for this answer any more.

    threading.Thread(target=run, name="pyprofiler-asgi-request", daemon=True).start()
    return await done


async def _send_reply(send: Send, reply: Reply, head_only: bool) -> None:
    body = list(reply.body)
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    if not any(key == b"content-length" for key, _ in headers):
        headers.append((b"content-length", str(sum(map(len, body))).encode()))
    if head_only:
        body = []
    try:
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        for i, chunk in enumerate(body):
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": i < len(body) - 1}
            )
        if not body:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:
        pass  # The client went away meanwhile.
