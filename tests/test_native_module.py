"""The extension and its stub, pyprofiler/samplers/_native.pyi, name the same things: every
Python-visible name of the module (functions, types, their methods, constants) is described, and
nothing described is missing; the limits shared with the Python side are ints."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pyprofiler.samplers.native import native

pytestmark = pytest.mark.skipif(native is None, reason="needs the C extension")

STUB = Path(__file__).parent.parent / "pyprofiler" / "samplers" / "_native.pyi"

LIMITS = (
    "MAX_STACK_DEPTH",
    "SAMPLER_MAX_ENTRIES",
    "SAMPLER_MAX_THREADS",
    "SAMPLER_MAX_HZ",
    "LOCK_MAX_ENTRIES",
    "LOCK_MAX_DEPTH",
    "HEAP_MAX_DEPTH",
    "HEAP_MAX_BUCKETS",
)


def stub_names() -> tuple[dict[str, ast.stmt], dict[str, set[str]]]:
    """The stub's public module-level names, and each class's methods (constructors aside: the
    types' own __init__ is object's)."""
    tree = ast.parse(STUB.read_text(), filename=str(STUB))
    names: dict[str, ast.stmt] = {}
    methods: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            name = node.name
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
        else:
            continue
        if name.startswith("_"):
            continue  # The stub's own type aliases.
        names[name] = node
        if isinstance(node, ast.ClassDef):
            methods[name] = {
                item.name
                for item in node.body
                if isinstance(item, ast.FunctionDef) and item.name != "__init__"
            }
    return names, methods


def module_names() -> set[str]:
    return {name for name in vars(native) if not name.startswith("_")}


def type_methods(cls: type) -> set[str]:
    """The methods the type itself defines (its method table), dunders included."""
    return {
        name for name, value in vars(cls).items() if type(value).__name__ == "method_descriptor"
    }


def test_the_stub_names_every_public_name_of_the_module_and_nothing_else():
    names, _ = stub_names()
    assert sorted(module_names() - set(names)) == [], "missing from the stub"
    assert sorted(set(names) - module_names()) == [], "in the stub, not in the module"


def test_the_stub_names_every_method_of_each_type_and_nothing_else():
    _, methods = stub_names()
    assert methods, "the stub describes no class"
    for name, described in methods.items():
        cls = getattr(native, name)
        assert isinstance(cls, type)
        assert sorted(type_methods(cls) - described) == [], f"{name}: missing from the stub"
        assert sorted(described - type_methods(cls)) == [], f"{name}: not in the module"


def test_functions_in_the_stub_are_callables_and_constants_are_ints():
    names, _ = stub_names()
    for name, node in names.items():
        value = getattr(native, name)
        if isinstance(node, ast.AnnAssign):
            assert type(value) is int, name
        else:
            assert callable(value), name


@pytest.mark.parametrize("name", LIMITS)
def test_the_shared_limits_are_exported_as_positive_ints(name):
    value = getattr(native, name)
    assert type(value) is int and value > 0


def test_the_sampler_refuses_a_rate_above_its_exported_limit():
    with pytest.raises(ValueError, match=str(native.SAMPLER_MAX_HZ)):
        native.StackSampler(native.SAMPLER_MAX_HZ + 1, False)
    native.StackSampler(native.SAMPLER_MAX_HZ, False)  # Never started: nothing to stop.


def test_current_stack_keeps_at_most_the_heap_depth():
    def deeper(n: int):
        return deeper(n - 1) if n else native.current_stack(0)

    assert len(deeper(native.HEAP_MAX_DEPTH + 10)) == native.HEAP_MAX_DEPTH


def test_current_stack_lines_stay_right_for_code_made_and_dropped():
    # Each round compiles a function whose call stands on a different line, calls it and drops
    # it: its code object and line table are freed, and the next round's are most often made in
    # the same blocks. The lines the recorders capture must be the new code's, not remembered
    # ones of the dead code at the same addresses.
    for round_ in range(300):
        blank = round_ % 7
        source = "def probe(native):\n" + "\n" * blank + "    return native.current_stack(0)\n"
        namespace: dict = {}
        exec(compile(source, "<probe>", "exec"), namespace)
        stack = namespace.pop("probe")(native)
        code, line = stack[0]
        assert code.co_name == "probe"
        assert line == 2 + blank, (round_, line)
        del stack, code
