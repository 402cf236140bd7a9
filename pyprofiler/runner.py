"""`python -m pyprofiler run`: an unmodified program, with pyprofiler serving from inside it.

The runner settles its options and the PYPROFILER_* variables (an option wins over its
variable), puts pyprofiler's bootstrap directory (which holds a `sitecustomize`) first on
PYTHONPATH, writes every setting into the variables and replaces itself with the program by
`os.execve`, as ddtrace-run does. The program keeps the runner's pid, so its exit status and the
signals sent to it are its own with nothing in between to forward them, and every Python
process it starts (uvicorn's workers, a spawn pool, Django's reloader) inherits the variables
and starts pyprofiler too. Bad usage exits with status 2 before anything runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace

from pyprofiler.settings import OPTIONS, SettingError, Settings, parse_environ

USAGE = "python -m pyprofiler run [options] (-m module | script.py | program) [args ...]"
BOOTSTRAP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")
# Exit statuses of `env` and POSIX shells for a program that is missing or cannot be executed.
EXIT_NOT_FOUND = 127
EXIT_CANNOT_EXECUTE = 126

_DESCRIPTION = """\
Run a Python program with pyprofiler serving /debug/pprof/ from inside it, without editing it:
  -m module [args]    as `python -m module args`
  script.py [args]    as `python script.py args`
  program [args]      a program on PATH (such as gunicorn, uvicorn, celery), or a path to one
Every Python process the program starts, forked or spawned, is profiled too. The runner's
options come before the program; everything after it is the program's."""


def _parser() -> argparse.ArgumentParser:
    environment = "\n".join(f"  {o.env:<26} {o.flag}" for o in OPTIONS)
    parser = argparse.ArgumentParser(
        prog="python -m pyprofiler run",
        usage=USAGE,
        description=_DESCRIPTION,
        epilog=f"Each option can be set by its environment variable instead:\n{environment}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for option in OPTIONS:
        parser.add_argument(
            option.flag,
            dest=option.field,
            metavar=option.metavar,
            help=option.help,
            type=_argparse_type(option.parse),
        )
    return parser


def _argparse_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    def checked(text: str) -> object:
        try:
            return parse(text)
        except SettingError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return checked


def split_command_line(args: list[str]) -> tuple[list[str], list[str]]:
    """(the runner's own options, the program and its arguments): the program starts at `-m`,
    at the first word that is not an option or an option's value, or after `--`."""
    takes_value = {option.flag for option in OPTIONS}
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            return args[:index], args[index + 1 :]
        if arg.startswith("-m") or not arg.startswith("-"):
            return args[:index], args[index:]
        index += 2 if arg in takes_value else 1
    return args, []


def program_command(program: list[str]) -> tuple[str, list[str]] | None:
    """(executable, argv) for `program`; None when the program is not found on PATH."""
    first, rest = program[0], program[1:]
    if first.startswith("-m"):
        module = first[2:] or rest.pop(0)
        return sys.executable, [sys.executable, "-m", module, *rest]
    if first.endswith(".py"):
        return sys.executable, [sys.executable, first, *rest]
    if os.sep in first:
        return first, program
    found = shutil.which(first)
    return None if found is None else (found, program)


def program_environ(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The program's environment: every setting in its variable, the bootstrap first on
    PYTHONPATH (once, however often runners are nested)."""
    result = dict(environ)
    for name, value in settings.to_environ().items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    paths = [p for p in result.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths = [p for p in paths if os.path.abspath(p) != BOOTSTRAP_DIR]
    result["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP_DIR, *paths])
    return result


def run(args: list[str], environ: Mapping[str, str] = os.environ) -> int:
    """Parse `run`'s arguments and replace this process with the program; returns only when
    the program cannot be started (argparse exits with status 2 on bad usage)."""
    parser = _parser()
    own, program = split_command_line(args)
    namespace = parser.parse_args(own)
    if not program:
        parser.error("no program to run: give -m module, script.py or a program and its args")
    if program == ["-m"]:
        parser.error("argument -m: expected a module name")
    from_options = {f: v for f, v in vars(namespace).items() if v is not None}
    overridden = {option.env for option in OPTIONS if option.field in from_options}
    try:
        from_environ = parse_environ({k: v for k, v in environ.items() if k not in overridden})
    except SettingError as error:
        parser.error(str(error))
    settings = Settings(**{**from_environ, **from_options})
    if settings.dump_dir is not None:
        # The program may change directory (gunicorn --chdir) and so may its children.
        settings = replace(settings, dump_dir=os.path.abspath(settings.dump_dir))
    command = program_command(program)
    if command is None:
        print(f"pyprofiler run: {program[0]}: command not found on PATH", file=sys.stderr)
        return EXIT_NOT_FOUND
    executable, argv = command
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(executable, argv, program_environ(settings, environ))
    except OSError as error:
        print(f"pyprofiler run: cannot execute {executable}: {error.strerror}", file=sys.stderr)
        return EXIT_NOT_FOUND if isinstance(error, FileNotFoundError) else EXIT_CANNOT_EXECUTE
