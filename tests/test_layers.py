"""The import rules of the tree (docs/development.md): samplers/ records and never reaches up to
what builds, encodes, renders or serves profiles; HTTP reaches profiles only through the
registry; only samplers/native.py imports the extension. Imports made only for type checkers
(`if TYPE_CHECKING:`) are not dependencies and are not counted."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pyprofiler"
EXTENSION = "_native"  # The C extension's module name, in whichever package it is built.
# All that samplers/ may import of the rest: the records' types, the stall-free helpers and the
# errors. Never the registry, the encoder, the renderers, HTTP, the servers or the profiles.
SAMPLERS_MAY_IMPORT = {
    "pyprofiler.snapshot",
    "pyprofiler.stalls",
    "pyprofiler.errors",
}
HTTP_MAY_IMPORT = {"pyprofiler", "pyprofiler.registry", "pyprofiler.errors", "pyprofiler.ui"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, ast.If) and _type_checking_only(node):
            yield from _statements(node.orelse)
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                yield from _statements([n for n in inner if isinstance(n, ast.AST)])


def imports_of(source: str, module: str) -> set[str]:
    """The modules `source` (the module `module`) imports, `from a import b` counted as a.b
    where a.b is a module of pyprofiler and as a otherwise."""
    found = set()
    is_package = (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()
    package = module if is_package else module.rpartition(".")[0]
    for node in _statements(ast.parse(source).body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _is_module(candidate) else base)
    return found


def _is_module(name: str) -> bool:
    if name.rpartition(".")[2] == EXTENSION:
        return True
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _in_samplers(name: str) -> bool:
    return name == "pyprofiler.samplers" or name.startswith("pyprofiler.samplers.")


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_proto" in path.parts:
            continue
        module = module_name(path)
        imported = imports_of(path.read_text(encoding="utf-8"), module)
        ours = {name for name in imported if name == "pyprofiler" or name.startswith("pyprofiler.")}
        if module.startswith("pyprofiler.samplers"):
            above = {name for name in ours - SAMPLERS_MAY_IMPORT if not _in_samplers(name)}
            found += [f"{module} imports {name}" for name in sorted(above)]
        if module == "pyprofiler.http":
            found += [f"{module} imports {name}" for name in sorted(ours - HTTP_MAY_IMPORT)]
        if module != "pyprofiler.samplers.native":
            found += [
                f"{module} imports the extension"
                for name in ours
                if name.rpartition(".")[2] == EXTENSION
            ]
    return found


def test_imports_follow_the_layers():
    found = violations()
    assert not found, "imports across the layers:\n" + "\n".join(found)


def test_the_rules_see_a_forbidden_import():
    source = "from pyprofiler import registry\nfrom pyprofiler.samplers import _native\n"
    imported = imports_of(source, "pyprofiler.samplers.stack")
    assert "pyprofiler.registry" in imported
    assert "pyprofiler.samplers._native" in imported
    checked = imports_of("if TYPE_CHECKING:\n    from pyprofiler import proto\n", "pyprofiler.http")
    assert checked == set()


def test_import_pyprofiler_loads_neither_flask_nor_werkzeug():
    # Only create_app() and blueprint() need Flask; the API and the own server do not.
    check = (
        "import sys, pyprofiler; "
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'flask', 'werkzeug'}); "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)
