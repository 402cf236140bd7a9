"""Starting pyprofiler as the PYPROFILER_* variables ask, from the runner's bootstrap.

This runs before the program's own code, in every Python process started under
`python -m pyprofiler run`, so it never raises into the program nor ends it: whatever fails is
one line on stderr naming pyprofiler, and the program runs on without that part.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import pyprofiler
from pyprofiler.settings import Settings, settings_from_environ


def log(message: str) -> None:
    """One line on stderr, naming pyprofiler and this process."""
    try:
        if sys.stderr is not None:
            sys.stderr.write(f"pyprofiler (pid {os.getpid()}): {message}\n")
            sys.stderr.flush()
    except Exception:  # A closed or broken stderr is the program's business, not ours.
        pass


def _described(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def start_from_environ(environ: Mapping[str, str] = os.environ) -> None:
    """Set the rates, start periodic dumps and serve, as the variables say; never raises."""
    try:
        settings = settings_from_environ(environ)
    except Exception as error:
        log(f"not started: {error}")
        return
    _set_rates(settings)
    if settings.dump_dir is not None:
        _start_dumps(settings)
    _serve(settings)


def _set_rates(settings: Settings) -> None:
    setters = (
        (settings.cpu_hz, pyprofiler.set_cpu_profile_rate),
        (settings.mem_rate, pyprofiler.set_mem_profile_rate),
        (settings.block_rate, pyprofiler.set_block_profile_rate),
        (settings.mutex_fraction, pyprofiler.set_mutex_profile_fraction),
    )
    for value, setter in setters:
        if value is None:
            continue
        try:
            setter(value)
        except Exception as error:
            log(f"{setter.__name__}({value}) failed: {_described(error)}")


def _serve(settings: Settings) -> None:
    where = f"{settings.host}:{settings.port}"
    try:
        server = pyprofiler.serve(host=settings.host, port=settings.port)
    except (Exception, SystemExit) as error:  # Not even a SystemExit may end the program.
        log(f"not serving on {where}: {_described(error)}")
        return
    # The program may call serve() itself: its own call then takes this server over (the same
    # port) or replaces it (another port), as for a server inherited from a parent process,
    # instead of failing because the runner served first.
    server.inherited = True
    if settings.port == 0:  # Nobody else can know which port was picked.
        log(f"serving {server.url}")


def _start_dumps(settings: Settings) -> None:
    # start_periodic writes the last, partial window at exit and restarts in forked children.
    options: dict[str, object] = {"interval": settings.interval}
    if settings.profiles is not None:
        options["profiles"] = settings.profiles
    if settings.keep is not None:
        options["keep"] = settings.keep
    try:
        pyprofiler.start_periodic(os.path.abspath(settings.dump_dir), **options)
    except Exception as error:
        log(f"no periodic dumps to {settings.dump_dir}: {_described(error)}")
