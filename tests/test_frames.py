"""Qualified frame names `module.Class.method`, which must not depend on the Python version:
3.11+ reads co_qualname, 3.9/3.10 rebuild it from the module's namespace."""

from __future__ import annotations

import functools
import sys
import types

import pytest

from pyprofiler.samplers.frames import FrameNamer
from pyprofiler.snapshot import Frame


def plain_function():
    return sys._getframe()


class Outer:
    def method(self):
        return sys._getframe()

    @staticmethod
    def static():
        return sys._getframe()

    @classmethod
    def klass(cls):
        return sys._getframe()

    @property
    def prop(self):
        return sys._getframe()

    @prop.setter
    def prop(self, value):
        self.set_frame = sys._getframe()

    class Inner:
        def inner_method(self):
            return sys._getframe()

        class Innermost:
            @staticmethod
            def deepest():
                return sys._getframe()


def logged(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        return function(*args, **kwargs), sys._getframe()

    return wrapper


@logged
def decorated_first():
    return sys._getframe()


@logged
def decorated_second():
    return sys._getframe()


class Service:
    @logged
    def handle(self):
        return sys._getframe()


def setter_frame():
    outer = Outer()
    outer.prop = 1
    return outer.set_frame


CASES = [
    (plain_function, "plain_function"),
    (Outer().method, "Outer.method"),
    (Outer.static, "Outer.static"),
    (Outer.klass, "Outer.klass"),
    (lambda: Outer().prop, "Outer.prop"),
    (setter_frame, "Outer.prop"),
    (Outer.Inner().inner_method, "Outer.Inner.inner_method"),
    (Outer.Inner.Innermost.deepest, "Outer.Inner.Innermost.deepest"),
]


@pytest.mark.parametrize(("call", "qualname"), CASES, ids=[q for _, q in CASES])
def test_qualified_names(call, qualname):
    frame = call()
    named = FrameNamer().frame(frame.f_code, frame.f_lineno, __name__)
    assert named == Frame(
        f"{__name__}.{qualname}",
        __file__,
        frame.f_code.co_firstlineno,
        frame.f_lineno,
    )


def test_decorated_functions_keep_their_own_names():
    namer = FrameNamer()
    for decorated in (decorated_first, decorated_second):
        inner, wrapper = decorated()
        name = decorated.__name__
        assert namer.frame(inner.f_code, inner.f_lineno, __name__).function == f"{__name__}.{name}"
        # The wrapper is one code object shared by every decorated function: it must not be
        # reported as any one of them (that would send decorated_second's time to _first).
        wrapper_name = namer.frame(wrapper.f_code, wrapper.f_lineno, __name__).function
        assert wrapper_name.endswith("wrapper"), wrapper_name


def test_decorated_method_keeps_its_class():
    inner, _ = Service().handle()
    named = FrameNamer().frame(inner.f_code, inner.f_lineno, __name__)
    assert named.function == f"{__name__}.Service.handle"


def test_no_module_is_found_by_filename():
    # Code seen without its globals (creation stacks, allocation tracebacks) is named by the
    # module that owns its file.
    frame = Outer().method()
    named = FrameNamer().frame(frame.f_code, frame.f_lineno)
    assert named.function == f"{__name__}.Outer.method"


def test_no_module_and_unknown_file_gives_bare_name():
    module_code = compile("def f():\n    pass\n", "<nowhere>", "exec")
    code = next(c for c in module_code.co_consts if isinstance(c, types.CodeType))
    assert FrameNamer().frame(code, 2).function == "f"


def test_unknown_module_falls_back_to_code_name():
    frame = Outer().method()
    named = FrameNamer().frame(frame.f_code, frame.f_lineno, "no_such_module_loaded")
    assert named.function.startswith("no_such_module_loaded.")
    assert named.function.endswith("method")


def test_line_zero_when_unknown():
    frame = plain_function()
    assert FrameNamer().frame(frame.f_code, None, __name__).line == 0


def test_module_level_code_is_named_module():
    code = compile("x = 1", "<generated>", "exec")
    named = FrameNamer().frame(code, 1, "generated_mod")
    assert named == Frame("generated_mod.<module>", "<generated>", 1, 1)
