"""A gunicorn configuration that starts pyprofiler in each worker as it is forked, for an app
that should not import pyprofiler itself (here examples/gunicorn_app.py, left with PPROF_PORT
unset):

    gunicorn -c examples/gunicorn_conf.py -w 4 --chdir examples gunicorn_app:app
"""

import os

import pyprofiler

# Every worker serves the same port, and the workers answer on it as one service.
PPROF_PORT = int(os.environ.get("PPROF_HOOK_PORT", "6060"))


def post_fork(server, worker) -> None:
    pyprofiler.serve(port=PPROF_PORT)
