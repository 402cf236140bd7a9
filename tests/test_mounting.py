"""The recipes of docs/production.md for mounting pyprofiler in an application: Flask's
blueprint, Django's WSGI and ASGI handlers, Starlette's Mount, and the WSGI app at any prefix.
Each serves the pages at the prefix it is given and leaves the host's own answers (404, 405)
exactly as they were (issue 11, item 4). FastAPI under uvicorn is in test_asgi.py."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import django
import pytest
from django.http import HttpResponse
from django.urls import path as django_path
from flask import Flask
from support import asgi_request, wait_until
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import make_server
from werkzeug.test import Client

import pyprofiler
from pyprofiler import cpu, proto

TEXT = "text/plain; charset=utf-8"


def own_cmdline() -> str:
    with open("/proc/self/cmdline", "rb") as file:
        return file.read().rstrip(b"\0").decode()


# --- An ASGI client of our own: a request is one call of the app.


def check_pages(fetch, prefix: str) -> None:
    """`fetch(method, path) -> (status, headers, body)` serves the pages at `prefix`."""
    status, headers, body = fetch("GET", f"{prefix}/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert b"<a href='goroutine?debug=1'>goroutine</a>" in body
    status, headers, body = fetch("GET", f"{prefix}/cmdline")
    assert (status, body.decode()) == (200, own_cmdline())
    status, headers, body = fetch("GET", f"{prefix}/goroutine")
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    assert proto.decode(body).sample_types[0].type == "goroutine"
    status, headers, body = fetch("GET", f"{prefix}/nope")
    assert (status, body) == (404, b"Unknown profile\n")
    status, headers, body = fetch("POST", f"{prefix}/heap")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, body = fetch("GET", prefix)
    assert status in (301, 307, 308) and headers["location"].endswith(f"{prefix}/")
    # The built-in viewer (issue 14): its page and its data, at the same prefix.
    status, headers, body = fetch("GET", f"{prefix}/ui/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    status, headers, body = fetch("GET", f"{prefix}/ui/profiles")
    assert status == 200 and b'"mode": "live"' in body and b'"url": "../heap"' in body


def wsgi_fetch(app):
    client = Client(app)

    def fetch(method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        response = client.open(path, method=method)
        headers = {k.lower(): v for k, v in response.headers.items()}
        return response.status_code, headers, response.get_data()

    return fetch


def asgi_fetch(app):
    return lambda method, path: asgi_request(app, method, path)


# --- Flask.


def flask_host() -> Flask:
    app = Flask("host")

    @app.route("/submit", methods=["POST"])
    def submit() -> str:
        return "submitted"

    return app


def test_flask_blueprint_keeps_the_hosts_404_and_405():
    plain = flask_host().test_client()
    host = flask_host()
    host.register_blueprint(pyprofiler.blueprint())  # The recipe.
    client = host.test_client()
    for method, path in (("GET", "/nope"), ("GET", "/submit"), ("GET", "/debug/other")):
        alone, mounted = plain.open(path, method=method), client.open(path, method=method)
        assert (mounted.status_code, mounted.data) == (alone.status_code, alone.data)
    assert client.get("/submit").status_code == 405
    check_pages(wsgi_fetch(host), "/debug/pprof")


def test_flask_blueprint_at_a_prefix_of_its_own():
    host = flask_host()
    host.register_blueprint(pyprofiler.blueprint(url_prefix="/admin/pprof"))
    check_pages(wsgi_fetch(host), "/admin/pprof")
    assert host.test_client().get("/debug/pprof/").status_code == 404


# --- The WSGI app at any prefix.


def plain_wsgi(environ, start_response):
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"the host's own 404"]


@pytest.mark.parametrize("prefix", ["/debug/pprof", "/admin/pprof", "/ops/debug/pprof"])
def test_wsgi_app_serves_the_pages_at_the_prefix_it_is_mounted_at(prefix):
    app = DispatcherMiddleware(plain_wsgi, {prefix: pyprofiler.create_app()})
    check_pages(wsgi_fetch(app), prefix)
    status, _, body = wsgi_fetch(app)("GET", "/nope")
    assert (status, body) == (404, b"the host's own 404")


def test_wsgi_app_at_the_root_serves_debug_pprof_only():
    fetch = wsgi_fetch(pyprofiler.create_app())
    check_pages(fetch, "/debug/pprof")
    assert fetch("GET", "/elsewhere")[:3:2] == (404, b"404 page not found\n")


# --- Django.


def django_configured() -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="pyprofiler-tests",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,  # `urlpatterns` below.
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
        )
        django.setup()


def catalog(request):
    return HttpResponse("catalog")


urlpatterns = [django_path("catalog/", catalog)]


def test_django_wsgi_recipe():
    django_configured()
    from django.core.wsgi import get_wsgi_application

    # The recipe (docs/production.md): wsgi.py
    django_app = get_wsgi_application()
    application = DispatcherMiddleware(django_app, {"/debug/pprof": pyprofiler.create_app()})

    check_pages(wsgi_fetch(application), "/debug/pprof")
    alone = wsgi_fetch(django_app)("GET", "/nope")
    assert wsgi_fetch(application)("GET", "/nope") == alone
    assert alone[0] == 404
    assert wsgi_fetch(application)("GET", "/catalog/")[::2] == (200, b"catalog")


def test_django_asgi_recipe():
    django_configured()
    from django.core.asgi import get_asgi_application

    # The recipe (docs/production.md): asgi.py
    django_app = get_asgi_application()
    pprof_app = pyprofiler.asgi_app()

    async def application(scope, receive, send):
        if scope["type"] == "http" and (scope["path"] + "/").startswith("/debug/pprof/"):
            await pprof_app(scope, receive, send)
        else:
            await django_app(scope, receive, send)

    check_pages(asgi_fetch(application), "/debug/pprof")
    alone = asgi_request(django_app, "GET", "/nope")
    mounted = asgi_request(application, "GET", "/nope")
    assert (mounted[0], mounted[2]) == (alone[0], alone[2]) and alone[0] == 404
    assert asgi_request(application, "GET", "/catalog/")[::2] == (200, b"catalog")


# --- Starlette.


def test_starlette_mount_recipe():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def home(request):
        return PlainTextResponse("home")

    def starlette_app(with_pprof: bool) -> Starlette:
        routes = [Route("/", home, methods=["GET"])]
        if with_pprof:
            routes.append(Mount("/debug/pprof", app=pyprofiler.asgi_app()))  # The recipe.
        return Starlette(routes=routes)

    app, plain = starlette_app(True), starlette_app(False)
    check_pages(asgi_fetch(app), "/debug/pprof")
    for method, path in (("GET", "/nope"), ("POST", "/")):
        mounted, alone = asgi_request(app, method, path), asgi_request(plain, method, path)
        assert (mounted[0], mounted[2]) == (alone[0], alone[2])
    assert asgi_request(app, "POST", "/")[0] == 405


def test_the_asgi_app_answers_lifespan_and_refuses_websockets():
    app = pyprofiler.asgi_app()

    async def run() -> list[dict]:
        sent: list[dict] = []
        events = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

        async def receive() -> dict:
            return events.pop(0)

        async def send(message: dict) -> None:
            sent.append(message)

        await app({"type": "lifespan"}, receive, send)
        await app({"type": "websocket", "path": "/debug/pprof/"}, receive, send)
        return sent

    assert [m["type"] for m in asyncio.run(run())] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
        "websocket.close",
    ]


def test_a_profile_on_werkzeugs_server_stops_when_its_client_hangs_up():
    # werkzeug's development server (`flask run`) hands the app its connection, so a mounted
    # app can tell when the client goes away, as pyprofiler's own server can.
    app = flask_host()
    app.register_blueprint(pyprofiler.blueprint())
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    try:
        connection = socket.create_connection(("127.0.0.1", server.server_port), timeout=30)
        try:
            connection.sendall(b"GET /debug/pprof/wall?seconds=10 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert wait_until(lambda: cpu.windows_open("wall") == 1, timeout=10)
            time.sleep(0.3)
        finally:
            connection.close()
        hung_up = time.monotonic()
        assert wait_until(lambda: cpu.windows_open("wall") == 0, timeout=5, interval=0.002)
        assert time.monotonic() - hung_up < 0.25
    finally:
        server.shutdown()
        thread.join(timeout=10)
