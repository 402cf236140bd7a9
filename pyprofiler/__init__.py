"""pyprofiler: Go's net/http/pprof for Python processes.

    import pyprofiler
    pyprofiler.serve(port=6060)

then `go tool pprof http://127.0.0.1:6060/debug/pprof/profile?seconds=10`. In a web
application, mount `asgi_app()`, `create_app()` (WSGI) or `blueprint()` (Flask) instead.
"""

# calls, contention and trace register the calls, block, mutex and trace profiles; fork is the
# one at-fork entry.
from pyprofiler import calls, contention, fork, trace  # noqa: F401
from pyprofiler.asgi import asgi_app
from pyprofiler.count_profiles import new_profile
from pyprofiler.cpu import set_cpu_profile_rate, start_cpu_profile, stop_cpu_profile
from pyprofiler.errors import ProfilerBusyError, ProfileUnavailableError, PyprofilerError
from pyprofiler.heap import get_mem_profile_rate, set_mem_profile_rate, write_heap_profile
from pyprofiler.labels import get_labels, labels
from pyprofiler.periodic import start_periodic, stop_periodic
from pyprofiler.registry import Profile, lookup, profiles
from pyprofiler.request_labels import label_requests
from pyprofiler.samplers.locks import set_block_profile_rate, set_mutex_profile_fraction
from pyprofiler.server import Server, serve
from pyprofiler.wsgi import blueprint, create_app

__all__ = [
    "Profile",
    "ProfileUnavailableError",
    "ProfilerBusyError",
    "PyprofilerError",
    "Server",
    "asgi_app",
    "blueprint",
    "create_app",
    "get_labels",
    "get_mem_profile_rate",
    "label_requests",
    "labels",
    "lookup",
    "new_profile",
    "profiles",
    "serve",
    "set_block_profile_rate",
    "set_cpu_profile_rate",
    "set_mem_profile_rate",
    "set_mutex_profile_fraction",
    "start_cpu_profile",
    "start_periodic",
    "stop_cpu_profile",
    "stop_periodic",
    "write_heap_profile",
]
