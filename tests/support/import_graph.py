"""Which `bayou` module imports which, and the import cycles among them.

Read from the source with `ast`, never by importing it, so every import
statement counts: at module level and inside functions (a lazy import is
still a dependency). Imports under ``if TYPE_CHECKING:`` do not: they only
name types for annotations (the pool's helper modules annotate their
``pool: Pool`` argument), and are never executed. An import names one module:

* ``import a.b.c`` → ``a.b.c``; ``from a.b import c`` → the submodule
  ``a.b.c`` when there is one, else ``a.b`` (a package means its
  ``__init__``); relative imports are resolved against the importing
  module's package (``from . import x`` in ``bayou/pool/y.py`` is
  ``bayou.pool.x`` when that module exists, else ``bayou.pool``).
* The parent packages Python imports on the way (``bayou`` for
  ``bayou.pool.x``) are not counted: every submodule would otherwise be in a
  cycle with each package ``__init__`` that re-exports from it.
* ``_bayou_worker`` is the name `bayou.worker` is deployed under in an env.

Run it as ``python -m tests.support.import_graph`` to list the cycles.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "bayou"
ALIASES = {"_bayou_worker": "bayou.worker"}


@dataclass(frozen=True)
class Import:
    """One import statement of `importer` that names `imported`, at `line`."""

    importer: str
    imported: str
    line: int


def modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _aliased(name: str) -> str:
    for alias, real in ALIASES.items():
        if name == alias or name.startswith(alias + "."):
            return real + name[len(alias) :]
    return name


def imports(src: Path = SRC) -> list[Import]:
    """Every import among the package's modules (imports of other packages left out)."""
    known = modules(src)
    found: dict[Import, None] = {}  # one per statement and module named, in order
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for line, target in _named(ast.parse(path.read_text(), str(path)), package, known):
            if target in known and target != name:
                found[Import(name, target, line)] = None
    return list(found)


def _executed(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of `tree`, except the bodies of ``if TYPE_CHECKING:`` blocks."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _named(tree: ast.AST, package: str, known: dict[str, Path]) -> Iterator[tuple[int, str]]:
    for node in _executed(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, _deepest_module(_aliased(alias.name), known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = _aliased(node.module or "")
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                yield node.lineno, submodule if submodule in known else origin


def _deepest_module(name: str, known: dict[str, Path]) -> str:
    parts = name.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts)


def cycles(found: list[Import]) -> list[list[Import]]:
    """The import cycles: for each group of modules that import each other,
    directly or not (a strongly connected component), the imports within it."""
    graph: dict[str, set[str]] = {}
    for each in found:
        graph.setdefault(each.importer, set()).add(each.imported)
    groups = _strongly_connected(graph)
    return [
        sorted(
            (i for i in found if i.importer in group and i.imported in group),
            key=lambda i: (i.importer, i.imported, i.line),
        )
        for group in groups
        if len(group) > 1
    ]


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (no recursion limit to meet)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
    return groups


def describe(cycle: list[Import]) -> str:
    members = sorted({i.importer for i in cycle})
    lines = [f"cycle among {', '.join(members)}:"]
    for each in cycle:
        path = modules()[each.importer].relative_to(SRC.parent)
        lines.append(f"    {each.importer} -> {each.imported}  ({path}:{each.line})")
    return "\n".join(lines)


if __name__ == "__main__":
    found = cycles(imports())
    for cycle in found:
        print(describe(cycle))
    print(f"{len(found)} cycle(s)")
    sys.exit(1 if found else 0)
