"""The deployment examples, started as the README and docs/deployment.md say, each serving a CPU
profile that `go tool pprof` reads with the example's own hot function in it: gunicorn (sync and
gthread), uvicorn with FastAPI, Django, Celery with a prefork pool, a multiprocessing.Pool job;
each with serve() in the program (PPROF_PORT) and unmodified under `python -m pyprofiler run`.

Every service runs in a session of its own and is killed as a group; requests go to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from support import go_pprof, top_table

pytestmark = pytest.mark.deployment

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
BIN = Path(sys.executable).parent  # gunicorn, uvicorn: the console scripts of this Python.
RUNNER = [sys.executable, "-m", "pyprofiler", "run"]
START_TIMEOUT = 60
PROFILE_SECONDS = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environ(**extra: str) -> dict[str, str]:
    result = {k: v for k, v in os.environ.items() if not k.startswith(("PYPROFILER_", "PPROF_"))}
    result["PATH"] = f"{BIN}{os.pathsep}{result.get('PATH', '')}"
    result.update(extra)
    return result


@contextlib.contextmanager
def service(command: list[str], log: Path, **extra_environ: str):
    """`command` started in a session of its own, its output in `log`; the whole session is
    sent SIGTERM, then SIGKILL, when the block ends."""
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=environ(**extra_environ),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def wait_for_answer(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}:\n{log.read_text()}"
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def under_load(url: str, concurrency: int = 4):
    """Requests to `url` from a few threads until the block ends (at most 120 s)."""
    stop = threading.Event()
    deadline = time.monotonic() + 120

    def send() -> None:
        with requests.Session() as session:
            while not stop.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(requests.RequestException):
                    session.get(url, timeout=10)

    threads = [threading.Thread(target=send) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


def assert_cpu_profile_shows(pprof_port: int, function: str, tmp_path: Path, log: Path) -> None:
    url = f"http://127.0.0.1:{pprof_port}/debug/pprof/profile?seconds={PROFILE_SECONDS}"
    response = requests.get(url, timeout=PROFILE_SECONDS + 60)
    assert response.status_code == 200, response.text
    path = tmp_path / "cpu.pb.gz"
    path.write_bytes(response.content)
    table = top_table(go_pprof(["-top", "-nodecount=40"], path))
    found = {name: share for name, share in table.items() if name.endswith(function)}
    assert found, f"{function} not in the profile:\n{table}\n--- service output:\n" + (
        log.read_text()[-3000:]
    )


def check_web_service(command, app_url, function, pprof_port, tmp_path, **extra_environ):
    log = tmp_path / "service.log"
    with service(command, log, **extra_environ) as process:
        wait_for_answer(app_url, process, log)
        wait_for_answer(f"http://127.0.0.1:{pprof_port}/debug/pprof/", process, log)
        with under_load(app_url):
            time.sleep(1)  # Every worker busy before the profile starts.
            assert_cpu_profile_shows(pprof_port, function, tmp_path, log)


def check_job(command, function, pprof_port, tmp_path, **extra_environ):
    log = tmp_path / "job.log"
    with service(command, log, **extra_environ) as process:
        wait_for_answer(f"http://127.0.0.1:{pprof_port}/debug/pprof/", process, log)
        time.sleep(1)
        assert_cpu_profile_shows(pprof_port, function, tmp_path, log)


# --- gunicorn ---------------------------------------------------------------------------------


def gunicorn(app_port: int, *options: str) -> list[str]:
    bind = f"127.0.0.1:{app_port}"
    return ["gunicorn", *options, "-b", bind, "--chdir", "examples", "gunicorn_app:app"]


def test_gunicorn_sync_workers_serving_at_import(tmp_path):
    app_port, pprof_port = free_port(), free_port()
    command = [str(BIN / "gunicorn"), *gunicorn(app_port, "-w", "4")[1:]]
    url = f"http://127.0.0.1:{app_port}/invoice/42"
    function = "gunicorn_app.render_invoice"
    check_web_service(command, url, function, pprof_port, tmp_path, PPROF_PORT=str(pprof_port))


def test_gunicorn_serving_in_post_fork(tmp_path):
    app_port, pprof_port = free_port(), free_port()
    options = ("-c", "examples/gunicorn_conf.py", "-w", "2")
    command = [str(BIN / "gunicorn"), *gunicorn(app_port, *options)[1:]]
    url = f"http://127.0.0.1:{app_port}/invoice/42"
    function = "gunicorn_app.render_invoice"
    check_web_service(command, url, function, pprof_port, tmp_path, PPROF_HOOK_PORT=str(pprof_port))


def test_gunicorn_sync_workers_under_the_runner(tmp_path):
    app_port, pprof_port = free_port(), free_port()
    command = [*RUNNER, "--port", str(pprof_port), *gunicorn(app_port, "-w", "4")]
    url = f"http://127.0.0.1:{app_port}/invoice/42"
    check_web_service(command, url, "gunicorn_app.render_invoice", pprof_port, tmp_path)


def test_gunicorn_gthread_workers_under_the_runner(tmp_path):
    app_port, pprof_port = free_port(), free_port()
    options = ("-k", "gthread", "-w", "2", "--threads", "4")
    command = [*RUNNER, "--port", str(pprof_port), *gunicorn(app_port, *options)]
    url = f"http://127.0.0.1:{app_port}/invoice/42"
    check_web_service(command, url, "gunicorn_app.render_invoice", pprof_port, tmp_path)


# --- uvicorn with FastAPI ---------------------------------------------------------------------


def uvicorn(app_port: int) -> list[str]:
    options = ["--app-dir", "examples", "--workers", "2", "--port", str(app_port)]
    options += ["--log-level", "warning"]
    return ["uvicorn", "fastapi_app:app", "--host", "127.0.0.1", *options]


def test_uvicorn_workers_serving_at_import(tmp_path):
    app_port, pprof_port = free_port(), free_port()
    command = [str(BIN / "uvicorn"), *uvicorn(app_port)[1:]]
    url = f"http://127.0.0.1:{app_port}/search?q=profiling"
    function = "fastapi_app.rank_documents"
    check_web_service(command, url, function, pprof_port, tmp_path, PPROF_PORT=str(pprof_port))


def test_uvicorn_workers_under_the_runner(tmp_path):
    app_port, pprof_port = free_port(), free_port()
    # uvicorn's own --port is the app's; the runner's comes before the program.
    command = [*RUNNER, "--port", str(pprof_port), *uvicorn(app_port)]
    url = f"http://127.0.0.1:{app_port}/search?q=profiling"
    check_web_service(command, url, "fastapi_app.rank_documents", pprof_port, tmp_path)


# --- Django -----------------------------------------------------------------------------------


def test_django_runserver_under_the_runner(tmp_path):
    app_port, pprof_port = free_port(), free_port()
    manage = ["examples/django_app/manage.py", "runserver", "--noreload", f"127.0.0.1:{app_port}"]
    command = [*RUNNER, "--port", str(pprof_port), *manage]
    url = f"http://127.0.0.1:{app_port}/catalog/"
    check_web_service(command, url, "views.render_catalog", pprof_port, tmp_path)


def test_django_under_gunicorn_serving_at_import(tmp_path):
    app_port, pprof_port = free_port(), free_port()
    command = [str(BIN / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{app_port}"]
    command += ["--chdir", "examples/django_app", "wsgi"]
    url = f"http://127.0.0.1:{app_port}/catalog/"
    function = "views.render_catalog"
    check_web_service(command, url, function, pprof_port, tmp_path, PPROF_PORT=str(pprof_port))


# --- Celery and multiprocessing -----------------------------------------------------------------


def test_celery_prefork_pool_under_the_runner(tmp_path):
    pprof_port = free_port()
    command = [*RUNNER, "--port", str(pprof_port), "examples/celery_app.py"]
    check_job(command, "summarize_readings", pprof_port, tmp_path)


def test_celery_prefork_pool_serving_at_import(tmp_path):
    pprof_port = free_port()
    command = [sys.executable, "examples/celery_app.py"]
    check_job(command, "summarize_readings", pprof_port, tmp_path, PPROF_PORT=str(pprof_port))


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_pool_job_under_the_runner(tmp_path, start_method):
    pprof_port = free_port()
    job = ["examples/pool_job.py", "--seconds", "60", "--start-method", start_method]
    command = [*RUNNER, "--port", str(pprof_port), *job]
    check_job(command, ".crunch", pprof_port, tmp_path)


def test_pool_job_serving_parent(tmp_path):
    pprof_port = free_port()
    command = [sys.executable, "examples/pool_job.py", "--seconds", "60"]
    check_job(command, ".crunch", pprof_port, tmp_path, PPROF_PORT=str(pprof_port))
