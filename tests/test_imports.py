"""No import cycles inside tlserve: each arrow of the architecture flows one way.

A static check over the source, so it sees what running code may not: imports inside functions
(lazy ones) and under ``TYPE_CHECKING`` count too, since either still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tlserve

PACKAGE = Path(tlserve.__file__).parent
GENERATED = "tlserve.service.wire."  # protoc output (protos/generate.py)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, modules: set[str]) -> set[str]:
    """The tlserve modules ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # NOTE: `from tlserve.x import y` imports module tlserve.x.y when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import tlserve.x.y` where y is not a module
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    names = set(modules)
    return {
        name: imported(name, path, names) for name, path in modules.items() if not name.startswith(GENERATED)
    }


def find_cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every elementary cycle, each rotated to start at its smallest name: a depth-first search from
    each module through the modules after it (in sorted order), so each cycle is found once."""
    cycles: set[tuple[str, ...]] = set()

    def visit(start: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == start:
                cycles.add(tuple(path))
            elif nxt > start and nxt not in path and reaches(nxt, start):
                visit(start, [*path, nxt])

    reach: dict[str, set[str]] = {}

    def reaches(source: str, target: str) -> bool:
        if source not in reach:
            seen, todo = set(), [source]
            while todo:
                for nxt in graph.get(todo.pop(), ()):
                    if nxt not in seen:
                        seen.add(nxt)
                        todo.append(nxt)
            reach[source] = seen
        return target in reach[source]

    for start in sorted(graph):
        visit(start, [start])
    return cycles


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == {("a", "b", "c")}
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from tlserve.exporters.export import ExportOptions\n"
        "def f():\n    from tlserve.training import rundir\n    import tlserve.errors\n"
        "from . import x\n"
    )
    modules = {"tlserve.exporters.export", "tlserve.training", "tlserve.training.rundir", "tlserve.errors"}
    modules |= {"tlserve.pkg.x"}
    assert imported("tlserve.pkg.m", source, modules) == {
        "tlserve.exporters.export",
        "tlserve.training.rundir",
        "tlserve.errors",
        "tlserve.pkg.x",
    }


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert graph.get("tlserve.exporters.export")
    cycles = sorted(find_cycles(graph))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join((*c, c[0])) for c in cycles)
