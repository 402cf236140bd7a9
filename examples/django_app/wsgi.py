"""The WSGI application of the example Django project: the module gunicorn and uWSGI load and
`manage.py runserver` serves, so the place for serve() at import."""

import os

from django.core.wsgi import get_wsgi_application

import pyprofiler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

# This project's own switch for serving at import; under `python -m pyprofiler run`, leave it
# unset.
if os.environ.get("PPROF_PORT"):
    pyprofiler.serve(port=int(os.environ["PPROF_PORT"]))

application = get_wsgi_application()
