"""Imported by `site` at the start of every Python process under `python -m pyprofiler run`.

It hides any other `sitecustomize` (this directory comes first on PYTHONPATH), so it runs that
one first, then starts pyprofiler as the PYPROFILER_* variables say. Whatever fails is one line
on stderr naming pyprofiler; the program always runs on.
"""

import os
import sys


def _log(message: str) -> None:
    try:
        sys.stderr.write(f"pyprofiler (pid {os.getpid()}): {message}\n")
        sys.stderr.flush()
    except Exception:  # No stderr (or a broken one) is the program's business.
        pass


def _same_directory(path: str, directory: str) -> bool:
    try:
        return os.path.samefile(path or os.curdir, directory)
    except OSError:
        return False


def _run_hidden_sitecustomize(own_directory: str) -> None:
    import importlib.machinery
    import importlib.util

    rest = [p for p in sys.path if not _same_directory(p, own_directory)]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    # That module is the process's sitecustomize from here on, for whoever looks it up.
    sys.modules["sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # As `site` treats an error in a sitecustomize: report, go on.
        _log(f"error in {spec.origin}: {type(error).__name__}: {error}")


def _is_multiprocessing_helper() -> bool:
    # multiprocessing's resource tracker does no work of the program's; profiling it would
    # only add an idle process to the service.
    try:
        with open("/proc/self/cmdline", "rb") as file:
            return b"multiprocessing.resource_tracker" in file.read()
    except OSError:
        return False


def _start_pyprofiler() -> None:
    try:
        from pyprofiler import autostart
    except Exception as error:
        _log(f"not started in {sys.executable}: {type(error).__name__}: {error}")
        return
    autostart.start_from_environ()


def _bootstrap() -> None:
    own_directory = os.path.dirname(os.path.abspath(__file__))
    # The program sees the path it would have had; its children still inherit PYTHONPATH.
    sys.path[:] = [p for p in sys.path if not _same_directory(p, own_directory)]
    _run_hidden_sitecustomize(own_directory)
    if not _is_multiprocessing_helper():
        _start_pyprofiler()


try:
    _bootstrap()
except Exception as _error:
    _log(f"not started: {type(_error).__name__}: {_error}")
