"""Requests labelled for free: every sample taken while a request is handled carries its
`method` and its `route`, the framework's route template (`/users/<id>`), never the raw path,
so that the number of distinct values stays bounded.

    pyprofiler.label_requests(flask_app)             # Flask
    pyprofiler.label_requests(fastapi_app)           # FastAPI, Starlette
    MIDDLEWARE = ["pyprofiler.request_labels.DjangoMiddleware", ...]   # Django settings
    app = pyprofiler.request_labels.WSGIMiddleware(app)                # any WSGI app
    app = pyprofiler.request_labels.ASGIMiddleware(app)                # any ASGI app

The frameworks name the route as they dispatch: a request carries `method` alone until then.
Where no template can be known (a plain WSGI or ASGI app, a path that Flask matches to no
rule), the route is the raw path for the first MAX_RAW_PATHS distinct paths and `other` beyond
them; a path that FastAPI, Starlette or Django match to no route has no route label. The user's
own labels (`tenant`, `job`) are added inside the handler with `pyprofiler.labels(...)`.
"""

from __future__ import annotations

import contextvars
import re
import threading
from collections.abc import Awaitable, Iterable, Iterator
from typing import Any, Callable, Optional

from pyprofiler.samplers import labelsets

MAX_RAW_PATHS = 100
OTHER = "other"

Environ = dict[str, Any]
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]
RouteOf = Callable[[Any], Optional[str]]

__all__ = ["ASGIMiddleware", "DjangoMiddleware", "WSGIMiddleware", "label_requests"]


class BoundedRoutes:
    """Route label values, bounded: the first `limit` distinct ones as themselves, every later
    one as `other`, so that a scanner trying random raw paths (or a mount whose prefix holds a
    parameter) cannot fill the label tables."""

    def __init__(self, limit: int = MAX_RAW_PATHS) -> None:
        self._limit = limit
        self._paths: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, path: str) -> str:
        if path in self._paths:
            return path
        with self._lock:
            if len(self._paths) < self._limit:
                self._paths.add(path)
                return path
        return OTHER


def _enter(method: object, route: str | None) -> contextvars.Token | None:
    """The request's labels put in force; None where they cannot be (the app already has the
    most labels a set may hold, or the server gave a method that is not a string): the request
    goes on unlabelled, never failed by its profiler."""
    labels = (("method", method),) if route is None else (("method", method), ("route", route))
    current = labelsets.current
    try:
        return current.set(labelsets.child(current.get(labelsets.EMPTY), labels))
    except (TypeError, ValueError):
        return None


def _leave(token: contextvars.Token | None) -> None:
    if token is not None:
        labelsets.current.reset(token)


def _set_route(route: Callable[[], str]) -> None:
    """The route `route()` names, once the framework has matched it: until the request's
    labels end. Whatever goes wrong in naming it leaves the request as it was."""
    current = labelsets.current
    try:
        current.set(labelsets.child(current.get(labelsets.EMPTY), (("route", route()),)))
    except Exception:  # noqa: BLE001 - a label is never worth a failed request.
        pass


class _Middleware:
    """What the WSGI and ASGI middlewares share: the route a request starts with."""

    def __init__(self, app: Any, route_of: RouteOf | None = None, raw_paths: bool = True) -> None:
        self.app = app
        self.route_of = route_of
        self.routes = BoundedRoutes()
        self._label_raw_paths = raw_paths

    def _first_route(self, request: Any, path: str) -> str | None:
        """`route_of`'s template, else the bounded raw path (unless left to the app)."""
        route = self.route_of(request) if self.route_of is not None else None
        if route is None and self._label_raw_paths:
            route = self.routes(path or "/")
        return route


class WSGIMiddleware(_Middleware):
    """Labels each request of a WSGI app with `method` and `route`, while the app runs and while
    its response is iterated. `route_of(environ)` names the route template (None: unknown);
    where it does not, the route is the raw path, bounded (BoundedRoutes), or, with
    `raw_paths=False`, left for the app to set once it has matched the route."""

    def __call__(self, environ: Environ, start_response: Callable) -> Iterable[bytes]:
        route = self._first_route(environ, environ.get("PATH_INFO", ""))
        token = _enter(environ.get("REQUEST_METHOD", "GET"), route)
        try:
            body = self.app(environ, start_response)
            labelled = labelsets.current.get(labelsets.EMPTY)
        finally:
            _leave(token)
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(body, (list, tuple)) or (
            isinstance(file_wrapper, type) and isinstance(body, file_wrapper)
        ):
            return body  # Nothing runs as it is iterated; a server may send a file as it is.
        return _LabelledBody(body, labelled)


class _LabelledBody:
    """A response body iterated under the request's labels (the server iterates it after the
    app has returned). close() is passed on, as WSGI asks."""

    def __init__(self, body: Iterable[bytes], labelled: labelsets.LabelSet) -> None:
        self._body = body
        self._labelled = labelled

    def __iter__(self) -> Iterator[bytes]:
        current = labelsets.current
        iterator = iter(self._body)
        while True:
            token = current.set(self._labelled)
            try:
                chunk = next(iterator)
            except StopIteration:
                return
            finally:
                current.reset(token)
            yield chunk

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            close()


class ASGIMiddleware(_Middleware):
    """Labels each HTTP and WebSocket request of an ASGI app with `method` and `route`. The
    labels are in force in the request's task, and so in every task it creates.

    `route_of(scope)` names the route template before the app runs (None: unknown). A
    Starlette or FastAPI router names it as it matches: the scope passed down notices the
    router setting `route` and `path_params`, and the route label becomes that route's
    template, with the prefix it was mounted or included under. Until then the route is the
    raw path, bounded (BoundedRoutes), or, with `raw_paths=False` (for an app known to route so),
    not labelled: the raw path would be a value of its own for every user id."""

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        route = self._first_route(scope, scope.get("path", ""))
        token = _enter(scope.get("method", "WEBSOCKET"), route)
        try:
            await self.app(_RoutedScope(scope, self.routes), receive, send)
        finally:
            _leave(token)


_PATH_PARAMETER = re.compile(r"{([^}:]+)(?::[^}]*)?}")


class _RoutedScope(dict):
    """An ASGI scope that labels its request with the route a Starlette router matched, as the
    router stores its match in the scope: `endpoint` and `path_params` (and, in newer
    versions, `route`) in one update. A mount's update (it sets `root_path`) is not the end of
    the matching: its own router goes on."""

    __slots__ = ("_routes",)

    def __init__(self, scope: Scope, routes: BoundedRoutes) -> None:
        super().__init__(scope)
        self._routes = routes

    def update(self, *args: Any, **kwargs: Any) -> None:
        changes = dict(*args, **kwargs)
        super().update(changes)
        if "endpoint" in changes and "path_params" in changes and "root_path" not in changes:
            _set_route(lambda: self._routes(route_template(self)))


def route_template(scope: Scope) -> str:
    """The template of the route a Starlette router matched, with the prefix it is under.
    From the route where the scope holds it (newer Starlette, FastAPI): the part of the path
    before what the route's own template, filled in with the path's parameters, matched
    (`/api` + `/items/{item_id}`). Otherwise from the path, each parameter's value put back
    as its name (`/v1/things/9` -> `/v1/things/{x}`)."""
    path = scope.get("path", "")
    parameters = scope.get("path_params") or {}
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    if not isinstance(template, str):
        segments = path.split("/")
        for name, value in parameters.items():
            text = str(value)
            for i in range(len(segments) - 1, -1, -1):
                if segments[i] == text:
                    segments[i] = "{" + name + "}"
                    break
        return "/".join(segments)
    convertors = getattr(route, "param_convertors", None) or {}

    def filled_in(match: re.Match) -> str:
        value = parameters[match[1]]
        convertor = convertors.get(match[1])
        return convertor.to_string(value) if convertor is not None else str(value)

    try:
        matched = _PATH_PARAMETER.sub(filled_in, template)
    except Exception:  # A parameter missing or not convertible: the template as it stands.
        return template
    if matched and path.endswith(matched):
        return path[: len(path) - len(matched)] + template
    return template


def label_requests(app: Any) -> Any:
    """Label every request of a Flask, FastAPI or Starlette app with `method` and `route` (its
    route template); returns the app. Django: add `pyprofiler.request_labels.DjangoMiddleware`
    to MIDDLEWARE instead."""
    if hasattr(app, "wsgi_app") and hasattr(app, "url_value_preprocessor"):  # Flask
        middleware = WSGIMiddleware(app.wsgi_app, raw_paths=False)
        app.wsgi_app = middleware

        def label_route(endpoint: str | None, values: dict | None) -> None:
            from flask import request

            rule = request.url_rule
            _set_route(lambda: rule.rule if rule is not None else middleware.routes(request.path))

        # The route Flask matched as it pushed the request (no second match), first of the
        # preprocessors, so that the app's own before_request functions run under it.
        app.url_value_preprocessor(label_route)
        app.url_value_preprocessors[None].insert(0, app.url_value_preprocessors[None].pop())
        return app
    if hasattr(app, "add_middleware") and hasattr(app, "routes"):  # Starlette, FastAPI
        app.add_middleware(ASGIMiddleware, raw_paths=False)
        return app
    raise TypeError(
        f"label_requests() knows Flask, FastAPI and Starlette apps, not {type(app).__name__}: "
        "wrap it in WSGIMiddleware or ASGIMiddleware (Django: DjangoMiddleware in MIDDLEWARE)"
    )


class DjangoMiddleware:
    """Django's: `method` for each request, and `route` from the URL pattern that resolved it
    (`/users/<int:id>/`) once it is resolved; a path that resolves to no view has none.
    Synchronous views."""

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        token = _enter(request.method or "GET", None)
        try:
            return self.get_response(request)
        finally:
            _leave(token)

    def process_view(self, request: Any, view: Callable, args: Any, kwargs: Any) -> None:
        match = getattr(request, "resolver_match", None)
        if match is not None and getattr(match, "route", None):
            _set_route(lambda: "/" + match.route.lstrip("^"))
