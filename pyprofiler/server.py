"""`serve()`: the /debug/pprof/ routes on a threaded WSGI server in a daemon thread."""

from __future__ import annotations

import os
import threading

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from pyprofiler import heap, locks
from pyprofiler.errors import PyprofilerError
from pyprofiler.http import DEFAULT_MAX_SECONDS, blueprint, serve_error

_lock = threading.Lock()
_current: Server | None = None


def create_app(max_seconds: int = DEFAULT_MAX_SECONDS) -> Flask:
    """A plain WSGI application serving /debug/pprof/, for mounting in any WSGI server."""
    app = Flask("pyprofiler")
    app.register_blueprint(blueprint(max_seconds=max_seconds))
    app.register_error_handler(404, lambda _: serve_error(404, "404 page not found"))
    app.register_error_handler(405, lambda _: serve_error(405, "method not allowed"))
    return app


class _QuietHandler(WSGIRequestHandler):
    # The host application's stderr is not ours to fill with access logs.
    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


class Server:
    """A running pyprofiler HTTP server."""

    def __init__(self, wsgi_server: BaseWSGIServer, host: str) -> None:
        self._wsgi_server = wsgi_server
        self.host = host
        self.port: int = wsgi_server.server_port
        # A short poll interval: stop() waits for the serving loop to notice.
        self._thread = threading.Thread(
            target=wsgi_server.serve_forever, args=(0.1,), name="pyprofiler-http", daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/debug/pprof/"

    def stop(self) -> None:
        """Stop serving and free the port; profiles being taken finish on their own."""
        global _current
        self._wsgi_server.shutdown()
        self._wsgi_server.server_close()
        self._thread.join()
        with _lock:
            if _current is self:
                _current = None

    def __repr__(self) -> str:
        return f"<pyprofiler.Server {self.url}>"


def serve(
    host: str = "127.0.0.1",
    port: int = 6060,
    max_seconds: int = DEFAULT_MAX_SECONDS,
    block_profile_rate: int | None = None,
    mutex_profile_fraction: int | None = None,
) -> Server:
    """Serve /debug/pprof/ from a daemon thread and return at once.

    Binds loopback unless told otherwise; port 0 picks a free port. `max_seconds` caps the
    duration of CPU, wall and delta profiles. One server per process: call `.stop()` before
    serving again. Heap sampling starts at Go's default rate unless the program set a rate.
    `block_profile_rate` and `mutex_profile_fraction`, when given, are passed to
    set_block_profile_rate and set_mutex_profile_fraction (both are off by default, as in Go).
    """
    global _current
    with _lock:
        if _current is not None:
            raise PyprofilerError(
                f"pyprofiler is already serving at {_current.url}; "
                "call stop() on that server before serving again"
            )
        wsgi_server = make_server(
            host, port, create_app(max_seconds), threaded=True, request_handler=_QuietHandler
        )
        wsgi_server.daemon_threads = True
        _current = Server(wsgi_server, host)
    heap.enable_default()
    if block_profile_rate is not None:
        locks.set_block_profile_rate(block_profile_rate)
    if mutex_profile_fraction is not None:
        locks.set_mutex_profile_fraction(mutex_profile_fraction)
    _current._thread.start()
    return _current


def _forget_in_child() -> None:
    # The server thread does not exist in a forked child, which may serve on its own.
    global _current, _lock
    _lock = threading.Lock()
    _current = None


os.register_at_fork(after_in_child=_forget_in_child)
