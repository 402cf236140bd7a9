"""A small Flask service for gunicorn: each request waits on a "database", then renders an
invoice (the CPU work, in `render_invoice`).

Unmodified, under the runner (every worker profiled; the port answers for the service):

    python -m pyprofiler run --port 6060 gunicorn -w 4 --chdir examples gunicorn_app:app
    python -m pyprofiler run --port 6060 gunicorn -k gthread -w 2 --threads 4 \\
        --chdir examples gunicorn_app:app

Or with serve() at import (each worker calls it with the same port, and they answer as one):

    PPROF_PORT=6060 gunicorn -w 4 --chdir examples gunicorn_app:app

Then put it under load and profile it:

    python examples/load.py http://127.0.0.1:8000/invoice/42 --seconds 60 &
    go tool pprof -top 'http://127.0.0.1:6060/debug/pprof/profile?seconds=10'
"""

import os
import time

from flask import Flask

import pyprofiler

# This app's own switch for serving at import; under `python -m pyprofiler run`, leave it unset.
if os.environ.get("PPROF_PORT"):
    pyprofiler.serve(port=int(os.environ["PPROF_PORT"]))

app = Flask(__name__)


def load_order(order_id: int) -> list[tuple[str, int, float]]:
    time.sleep(0.002)  # The database round trip: in the wall profile, not the CPU profile.
    return [(f"item-{order_id}-{i}", 1 + i % 7, 0.5 + (i * 37 % 1000) / 100) for i in range(300)]


def render_invoice(order_id: int, lines: list[tuple[str, int, float]]) -> str:
    rows = []
    total = 0.0
    for repeat in range(20):
        rows.clear()
        total = 0.0
        for name, quantity, price in lines:
            amount = round(quantity * price * (1 + repeat / 1000), 2)
            total += amount
            rows.append(f"<tr><td>{name}</td><td>{quantity}</td><td>{amount:.2f}</td></tr>")
    return f"<h1>Invoice {order_id}</h1><table>{''.join(rows)}</table><p>{total:.2f}</p>"


@app.get("/invoice/<int:order_id>")
def invoice(order_id: int) -> str:
    return render_invoice(order_id, load_order(order_id))
