"""The optional C extension, or None where it was not built.

`PYPROFILER_NATIVE=0` in the environment ignores a built extension, so that the pure-Python
fallbacks can be tested on a machine that has it.
"""

from __future__ import annotations

import os
from types import ModuleType

native: ModuleType | None
try:
    if os.environ.get("PYPROFILER_NATIVE", "1") == "0":
        raise ImportError("disabled by PYPROFILER_NATIVE=0")
    from pyprofiler import _native as native
except ImportError:
    native = None
