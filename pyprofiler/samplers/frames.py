"""Qualified function names for code objects: `module.Class.method`.

Python 3.11+ stores the qualified name on the code object (`co_qualname`). On 3.9 and 3.10 it is
recovered from the defining module: functions, and methods of classes (nested classes included)
that the module defines at top level. Functions defined inside other functions are not reachable
that way and keep their bare name.
"""

from __future__ import annotations

import sys
import types

from pyprofiler.snapshot import Frame

_NESTED_CLASS_DEPTH = 4


def _functions_of(namespace: dict, depth: int):
    for value in list(namespace.values()):
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property):  # Its accessors may be any callable (attrgetter...).
            accessors = (value.fget, value.fset, value.fdel)
            yield from (f for f in accessors if isinstance(f, types.FunctionType))
        elif isinstance(value, types.FunctionType):
            # functools.wraps copies the wrapped function's names onto the wrapper: follow the
            # chain, and trust a function's names only if they are its own code's.
            while isinstance(value, types.FunctionType):
                if value.__code__.co_name == value.__name__:
                    yield value
                value = getattr(value, "__wrapped__", None)
        elif isinstance(value, type) and depth < _NESTED_CLASS_DEPTH:
            yield from _functions_of(dict(vars(value)), depth + 1)


class FrameNamer:
    """Turns (code, line) pairs into Frames; caches per module, so create one per snapshot."""

    def __init__(self) -> None:
        self._module_index: dict[str, dict[types.CodeType, str]] = {}
        self._modules_by_filename: dict[str, str] | None = None
        # Frames shared by every stack that contains them: tens of thousands of tasks stuck at
        # the same line then cost one Frame, not one each (and their release stays cheap).
        self._frames: dict[tuple[int, int], Frame] = {}

    def _qualname(self, code: types.CodeType, module: str | None) -> str:
        qualname = getattr(code, "co_qualname", None)
        if qualname is not None:
            return qualname
        if module is None:
            return code.co_name
        index = self._module_index.get(module)
        if index is None:
            index = self._module_index[module] = {}
            namespace = getattr(sys.modules.get(module), "__dict__", None)
            if namespace is not None:
                for function in _functions_of(dict(namespace), 0):
                    index.setdefault(function.__code__, function.__qualname__)
        return index.get(code, code.co_name)

    def frame(self, code: types.CodeType, line: int | None, module: str | None = None) -> Frame:
        """The Frame for a code object and line; without `module`, it is found by file name. A
        line that is not known (None or -1: code without a line table) is 0, Go's "unknown"."""
        if module is None:
            if self._modules_by_filename is None:
                self._modules_by_filename = modules_by_filename()
            module = self._modules_by_filename.get(code.co_filename)
        qualname = self._qualname(code, module)
        name = f"{module}.{qualname}" if module else qualname
        known_line = line if line is not None and line > 0 else 0
        return Frame(name, code.co_filename, code.co_firstlineno, known_line)

    def stack(self, raw: tuple) -> tuple[Frame, ...]:
        """Frames for a ((code, line), ...) stack; `raw` keeps its code objects alive."""
        frames = self._frames
        named = []
        for code, line in raw:
            if code in HIDDEN_CODE:
                continue
            frame = frames.get((id(code), line))
            if frame is None:
                frame = frames[(id(code), line)] = self.frame(code, line)
            named.append(frame)
        return tuple(named)


# pyprofiler's own functions that run the program's code inside them (creation.py): left out of
# every stack, so that the program's frames read as if called directly.
HIDDEN_CODE: set = set()


def modules_by_filename() -> dict[str, str]:
    """Module names keyed by source file, for code objects seen without their globals."""
    names = {}
    for name, module in list(sys.modules.items()):
        filename = getattr(module, "__file__", None)
        if isinstance(filename, str):
            names.setdefault(filename, name)
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if isinstance(main_file, str):  # `python -m pkg.mod` also imports it under its own name.
        names[main_file] = "__main__"
    return names
