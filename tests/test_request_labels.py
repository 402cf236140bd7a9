"""Requests labelled for free (pyprofiler.request_labels): Flask, FastAPI/Starlette, Django and
plain WSGI/ASGI apps label each request with `method` and its route template; under load, the
profiles tell the routes apart."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import requests
from support import asgi_request, go_pprof, read_line, top_table

import pyprofiler
from pyprofiler import request_labels

TESTS = os.path.dirname(os.path.abspath(__file__))


def flask_app():
    from flask import Flask

    app = Flask("labelled")

    @app.route("/users/<int:user_id>")
    def user(user_id: int) -> dict:
        return pyprofiler.get_labels()

    @app.route("/stream")
    def stream():
        return app.response_class(json.dumps(pyprofiler.get_labels()) for _ in range(1))

    return pyprofiler.label_requests(app)


def test_flask_requests_carry_method_and_route_template():
    client = flask_app().test_client()
    assert client.get("/users/7").json == {"method": "GET", "route": "/users/<int:user_id>"}
    assert client.get("/users/8").json == {"method": "GET", "route": "/users/<int:user_id>"}
    # The body is iterated after the app returns: under the request's labels too.
    assert json.loads(client.get("/stream").data) == {"method": "GET", "route": "/stream"}
    assert client.get("/nowhere").status_code == 404
    assert pyprofiler.get_labels() == {}


def test_raw_paths_are_bounded_where_no_template_is_known():
    seen = []

    def plain_app(environ, start_response):
        seen.append(pyprofiler.get_labels()["route"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    app = request_labels.WSGIMiddleware(plain_app)
    for n in range(request_labels.MAX_RAW_PATHS + 50):
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": f"/scan/{n}"}
        assert b"".join(app(environ, lambda status, headers: None)) == b"ok"
    assert seen[: request_labels.MAX_RAW_PATHS] == [
        f"/scan/{n}" for n in range(request_labels.MAX_RAW_PATHS)
    ]
    assert set(seen[request_labels.MAX_RAW_PATHS :]) == {"other"}
    assert b"".join(app({"PATH_INFO": "/scan/3"}, lambda s, h: None)) == b"ok"
    assert seen[-1] == "/scan/3"  # One already known stays itself.


def asgi_get(app, path: str, method: str = "GET") -> tuple[int, bytes]:
    status, _, body = asgi_request(app, method, path)
    return status, body


def test_fastapi_and_starlette_requests_carry_the_template_with_its_prefix():
    from fastapi import APIRouter, FastAPI
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    api = FastAPI()
    router = APIRouter()

    @router.get("/items/{item_id}")
    async def item(item_id: int) -> dict:
        return pyprofiler.get_labels()

    @router.get("/blocking/{name}")
    def blocking(name: str) -> dict:  # Run in the threadpool: the labels go with it.
        return pyprofiler.get_labels()

    api.include_router(router, prefix="/api")
    pyprofiler.label_requests(api)

    async def thing(request):
        return JSONResponse(pyprofiler.get_labels())

    mounted = Starlette(routes=[Mount("/v1", routes=[Route("/things/{x:int}", thing)])])
    pyprofiler.label_requests(mounted)

    status, body = asgi_get(api, "/api/items/3")
    assert (status, json.loads(body)) == (200, {"method": "GET", "route": "/api/items/{item_id}"})
    status, body = asgi_get(api, "/api/blocking/x")
    assert json.loads(body) == {"method": "GET", "route": "/api/blocking/{name}"}
    status, body = asgi_get(mounted, "/v1/things/9")
    assert json.loads(body) == {"method": "GET", "route": "/v1/things/{x}"}
    assert asgi_get(api, "/nowhere")[0] == 404
    assert asgi_get(api, "/api/items/3", method="DELETE")[0] == 405


def test_a_request_that_cannot_be_labelled_is_served_unlabelled():
    from pyprofiler.samplers import labelsets

    full = {f"key{n}": "v" for n in range(labelsets.MAX_LABELS)}  # No room for method, route.
    client = flask_app().test_client()
    with pyprofiler.labels(**full):
        response = client.get("/users/7")
        assert response.status_code == 200 and response.json == full
        assert pyprofiler.get_labels() == full
    environ = {"REQUEST_METHOD": None, "PATH_INFO": "/"}  # A server's odd method: no label.
    app = request_labels.WSGIMiddleware(
        lambda environ, start_response: [json.dumps(pyprofiler.get_labels()).encode()]
    )
    assert b"".join(app(environ, lambda status, headers: None)) == b"{}"


def test_an_app_it_does_not_know_is_a_type_error_saying_what_to_do():
    with pytest.raises(TypeError, match="WSGIMiddleware or ASGIMiddleware"):
        pyprofiler.label_requests(object())


DJANGO_CHILD = """
import json
import django
from django.conf import settings
from django.http import JsonResponse
from django.urls import path

import pyprofiler

def user(request, user_id):
    return JsonResponse(pyprofiler.get_labels())

urlpatterns = [path("users/<int:user_id>/", user)]
settings.configure(
    DEBUG=False, SECRET_KEY="t", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
    MIDDLEWARE=["pyprofiler.request_labels.DjangoMiddleware"], INSTALLED_APPS=[],
)
django.setup()
from django.test import Client

client = Client()
print(json.dumps([client.get("/users/5/").json(), client.get("/nowhere").status_code,
                  pyprofiler.get_labels()]))
"""


def test_django_requests_carry_the_url_pattern():
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DJANGO_CHILD)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    labels, missing, outside = json.loads(result.stdout.splitlines()[-1])
    assert labels == {"method": "GET", "route": "/users/<int:user_id>/"}
    assert missing == 404 and outside == {}


# --- under load, with real servers ------------------------------------------------------------


def serve_and_load(kind: str, tmp_path, paths: list[str]) -> tuple:
    """The labelled app of `kind` under load from 4 clients while a 3 s wall profile and a 3 s
    CPU profile are taken; their files."""
    app = subprocess.Popen(
        [sys.executable, os.path.join(TESTS, "labelled_apps.py"), kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stop, errors = threading.Event(), []
    try:
        urls = json.loads(read_line(app, timeout=60))

        def client() -> None:
            session, n = requests.Session(), 0
            try:
                while not stop.is_set() and n < 100_000:
                    for path in paths:
                        response = session.get(urls["app"] + path.format(n=n % 40), timeout=30)
                        response.raise_for_status()
                    n += 1
            except Exception as exc:  # Surfaced by the test.
                errors.append(exc)

        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        try:
            time.sleep(0.5)
            files = []
            for profile in ("wall", "profile"):
                response = requests.get(f"{urls['pprof']}{profile}?seconds=3", timeout=60)
                assert response.status_code == 200, response.text
                files.append(tmp_path / f"{kind}-{profile}.pb.gz")
                files[-1].write_bytes(response.content)
        finally:
            stop.set()
            for thread in clients:
                thread.join(timeout=60)
        assert not errors, errors
        return tuple(files)
    finally:
        app.stdin.close()
        try:
            app.wait(timeout=30)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait(timeout=30)


def route_values(tags_output: str) -> set[str]:
    section = tags_output.split(" route:", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"\): (.+)$", section, flags=re.M))


@pytest.mark.deployment
@pytest.mark.parametrize(
    ("kind", "users", "reports"),
    [
        ("flask", "/users/<int:user_id>", "/reports/<name>"),
        ("fastapi", "/api/users/{user_id}", "/api/reports/{name}"),
    ],
)
def test_routes_under_load_are_templates_and_show_where_they_wait(kind, users, reports, tmp_path):
    wall, cpu = serve_and_load(kind, tmp_path, ["/users/{n}", "/reports/r{n}"])
    for path in (wall, cpu):
        # Templates only: never /users/17.
        assert route_values(go_pprof(["-tags"], path)) == {users, reports}, path
    # A users request waits on its database: that is where its wall time goes.
    focused = top_table(
        go_pprof([f"-tagfocus=route={re.escape(users)}", "-top", "-nodefraction=0"], wall)
    )
    waiting = focused["__main__.wait_for_database"][1]
    assert waiting >= 0.8 * max(cum for _, cum in focused.values()), focused
    # A reports request computes: its CPU is in render_report.
    focused = top_table(
        go_pprof([f"-tagfocus=route={re.escape(reports)}", "-top", "-nodefraction=0"], cpu)
    )
    assert focused["__main__.render_report"][1] >= 0.8 * max(cum for _, cum in focused.values()), (
        focused
    )
