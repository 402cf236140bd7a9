"""The /debug/pprof/ routes as a WSGI application (`create_app()`) and as a Flask blueprint
(`blueprint()`), each working at any mount point and answering only its own paths.

Flask is imported only when one of those two is asked for: pyprofiler's own server, the API and
the periodic writer need none of it (and it is most of what `import pyprofiler` would cost).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import IO, TYPE_CHECKING, Callable
from urllib.parse import quote

from pyprofiler.guards import DEFAULT_MAX_CONCURRENT, Guards, origins
from pyprofiler.hangup import Signal, SocketHangup
from pyprofiler.http import (
    DEFAULT_MAX_SECONDS,
    PREFIX,
    Reply,
    Request,
    Routes,
    locate,
    not_found,
    redirect,
)

if TYPE_CHECKING:
    from flask import Blueprint, Flask

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
# Where WSGI servers put the client's connection: pyprofiler's own server puts the signal
# itself; werkzeug's development server (`flask run`) and gunicorn, the socket.
_SOCKET_KEYS = ("werkzeug.socket", "gunicorn.socket")


def hangup_signal(environ: dict) -> Signal | None:
    """What tells that the client went away, where the WSGI server exposes it."""
    signal = environ.get("pyprofiler.hangup")
    if signal is not None:
        return signal
    for key in _SOCKET_KEYS:
        connection = environ.get(key)
        if connection is not None and hasattr(connection, "fileno"):
            return SocketHangup(connection)
    return None


def _request(environ: dict, name: str, body: IO[bytes] | None) -> Request:
    headers = {
        key[5:].replace("_", "-").lower(): value
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    length = environ.get("CONTENT_LENGTH", "")
    return Request(
        method=environ.get("REQUEST_METHOD", "GET"),
        name=name,
        query=environ.get("QUERY_STRING", ""),
        headers=headers,
        body=body,
        content_length=int(length) if length.isascii() and length.isdigit() else None,
        hangup=hangup_signal(environ),
    )


class WSGIApp:
    """The /debug/pprof/ pages as a WSGI application: under /debug/pprof/ of wherever it is
    served, or directly under the prefix it is mounted at (SCRIPT_NAME)."""

    def __init__(self, routes: Routes) -> None:
        self.routes = routes

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        mount = environ.get("SCRIPT_NAME", "").rstrip("/")
        path = environ.get("PATH_INFO", "")
        name, needs_slash = locate(path, mounted=bool(mount))
        if name is None:
            reply = not_found()
        elif needs_slash:
            query = environ.get("QUERY_STRING", "")
            location = quote((mount + path).encode("latin-1", "replace"), safe="/") + "/"
            reply = redirect(location + (f"?{query}" if query else ""))
        else:
            reply = self.routes.answer(_request(environ, name, environ.get("wsgi.input")))
        start_response(reply.status_line, reply.headers)
        return reply.body


def _routes(
    max_seconds: int,
    token: str | None,
    allow_origins: Sequence[str] | str | None,
    max_concurrent: int,
) -> Routes:
    return Routes(max_seconds, Guards(token, origins(allow_origins), max_concurrent))


def create_app(
    max_seconds: int = DEFAULT_MAX_SECONDS,
    *,
    token: str | None = None,
    allow_origins: Sequence[str] | str | None = None,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
) -> Flask:
    """A WSGI application serving /debug/pprof/, for any WSGI server or dispatcher: at the
    root it serves /debug/pprof/...; mounted at a prefix (werkzeug's DispatcherMiddleware,
    FastAPI's WSGIMiddleware), it serves the pages directly under it. A Flask object, so that
    `test_client()` works; its routes are pyprofiler's own. The guards are serve()'s."""
    from flask import Flask

    app = Flask("pyprofiler")
    app.wsgi_app = WSGIApp(_routes(max_seconds, token, allow_origins, max_concurrent))  # type: ignore[method-assign]
    return app


def blueprint(
    max_seconds: int = DEFAULT_MAX_SECONDS,
    url_prefix: str = PREFIX,
    *,
    token: str | None = None,
    allow_origins: Sequence[str] | str | None = None,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
) -> Blueprint:
    """The /debug/pprof/ routes, for `app.register_blueprint(pyprofiler.blueprint())`, at
    `url_prefix` of the app (wherever the app itself is mounted). `max_seconds` caps the
    duration of CPU, wall and delta profiles; the guards are serve()'s."""
    from flask import Blueprint, Response
    from flask import request as flask_request

    routes = _routes(max_seconds, token, allow_origins, max_concurrent)
    pages = Blueprint("pyprofiler", __name__, url_prefix=url_prefix.rstrip("/") or None)

    def handle(name: str = "") -> Response:
        request = _request(flask_request.environ, name, flask_request.stream)
        request.content_length = flask_request.content_length
        reply: Reply = routes.answer(request)
        return Response(reply.body, status=reply.status, headers=reply.headers)

    pages.add_url_rule("/", "index", handle, methods=_ALL_METHODS)
    pages.add_url_rule("/<path:name>", "profile", handle, methods=_ALL_METHODS)
    return pages
