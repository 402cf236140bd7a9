"""`python -m pyprofiler COMMAND ...`: `run` (runner.py) or `ui` (ui/offline.py)."""

from __future__ import annotations

import sys

USAGE = """\
usage: python -m pyprofiler run [options] (-m module | script.py | program) [args ...]
       python -m pyprofiler ui FILE [--base BASE] [--port P]
       python -m pyprofiler run --help | ui --help"""


def main(args: list[str]) -> int:
    if args and args[0] == "run":
        from pyprofiler.runner import run

        return run(args[1:])
    if args and args[0] == "ui":
        from pyprofiler.ui.offline import main as ui_main

        return ui_main(args[1:])
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    print(USAGE, file=sys.stderr)
    got = f"not {args[0]!r}" if args else "missing"
    error = f"python -m pyprofiler: error: the command must be 'run' or 'ui' ({got})"
    print(error, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
