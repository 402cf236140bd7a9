"""The optional C extension, or None where it was not built; `unavailable_reason` says why.
The only module that imports it.

`PYPROFILER_NATIVE=0` in the environment ignores a built extension, so that the pure-Python
fallbacks can be tested on a machine that has it.
"""

from __future__ import annotations

import glob
import os
import sys
import sysconfig
from types import ModuleType

# The package directory the extension is built into (the import at the end names it).
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reason(error: ImportError) -> str:
    """What is actually missing, in a sentence that ends a message such as "the allocs
    profile needs pyprofiler's native extension, which ..."."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    samplers = os.path.join(_PACKAGE, "samplers")
    built = os.path.exists(os.path.join(samplers, "_native" + suffix))
    if built:
        return f"failed to load: {error}"
    checkout = os.path.exists(os.path.join(_PACKAGE, os.pardir, "pyproject.toml"))
    if checkout:
        builds = glob.glob(os.path.join(samplers, "_native.*.so"))
        others = sorted(os.path.basename(path) for path in builds)
        found = f" (built for others: {', '.join(others)})" if others else ""
        return (
            f"is not built for Python {version} in the source tree {_PACKAGE}, which this "
            f"program imported pyprofiler from{found}: run it from outside the checkout to use "
            "the installed pyprofiler, or build the extension there (pip install .)"
        )
    return (
        f"is not built for Python {version} in {_PACKAGE}: it is compiled at install time, "
        "so reinstall pyprofiler where a C compiler and Python's headers are available"
    )


native: ModuleType | None
unavailable_reason = ""
try:
    if os.environ.get("PYPROFILER_NATIVE", "1") == "0":
        unavailable_reason = "is ignored (PYPROFILER_NATIVE=0 is set)"
        raise ImportError(unavailable_reason)
    from pyprofiler.samplers import _native as native
except ImportError as exc:
    native = None
    unavailable_reason = unavailable_reason or _reason(exc)
