"""The example Django project: one page, /catalog/, whose rendering is the CPU work.

Unmodified, under the runner:

    python -m pyprofiler run --port 6060 examples/django_app/manage.py runserver --noreload
    python -m pyprofiler run --port 6060 gunicorn -w 2 --chdir examples/django_app wsgi

Or with serve() at import, in wsgi.py:

    PPROF_PORT=6060 python examples/django_app/manage.py runserver --noreload
    PPROF_PORT=6060 gunicorn -w 2 --chdir examples/django_app wsgi

Then put it under load and profile it:

    python examples/load.py http://127.0.0.1:8000/catalog/ --seconds 60 &
    go tool pprof -top 'http://127.0.0.1:6060/debug/pprof/profile?seconds=10'
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
