"""Check the import graph of the package(s) under src/: no circles, no layer breaks, no missing modules.

A circle (a -> b -> a) means neither module can be understood, tested or moved without
the other, and it works only while every import in it stays lazy or ordered just right.
Every import statement counts, including those inside functions and under
``if TYPE_CHECKING:``: a lazy import is still a dependency.

The layers, from the bottom up:

- families: ``tarsier.models.tarsier`` and ``tarsier.models.tarsier2`` (one per model
  family), reached from above only through ``tarsier.models.auto``;
- ``tarsier.models``: never imports the engine or an application;
- ``tarsier.engine``: never imports an application;
- applications: ``tarsier.cli``, ``tarsier.eval``, ``tarsier.train``, ``tarsier.serve``,
  ``tarsier.scale``.

A rule names module prefixes; a prefix matches the module of that name and the modules
below it. Rules whose prefixes name no module in the tree match nothing.

An import of a module outside the tree (``os``, ``torch``) is not checked. One whose top
level is a top-level package of the tree (``tarsier``) must name a module of the tree, or
it is reported as missing: ``import X`` and ``from X import ...`` need X to be a module
(a package directory counts, with or without an ``__init__``); ``from X import Y`` is also
fine as the module X.Y, and otherwise Y is taken to be a name defined in X, unchecked.

Usage: python scripts/check_imports.py [SRC_ROOT]; exit 0 when clean, 1 otherwise.
"""

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / "src"

APPLICATIONS = ("tarsier.cli", "tarsier.eval", "tarsier.train", "tarsier.serve", "tarsier.scale")
ENGINE = "tarsier.engine"
FAMILIES = ("tarsier.models.tarsier", "tarsier.models.tarsier2")

# (importer prefix, forbidden prefix, reason)
RULES: list[tuple[str, str, str]] = [
    *(
        (upper, family, "applications and the engine reach a family through tarsier.models.auto")
        for upper in (*APPLICATIONS, ENGINE)
        for family in FAMILIES
    ),
    *(
        ("tarsier.models", upper, "models never import applications or the engine")
        for upper in (*APPLICATIONS, ENGINE)
    ),
    *((ENGINE, app, "the engine never imports applications") for app in APPLICATIONS),
]


class Import(NamedTuple):
    """One import of a module of the tree by another (or of a missing one), where it is written."""

    importer: str
    imported: str
    path: Path
    line: int


def _order(site: Import) -> tuple[str, int, str]:
    return site.importer, site.line, site.imported


def _module_files(root: Path) -> dict[str, Path]:
    """Module name -> file for every .py under root (a package is its ``__init__``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if not all(part.isidentifier() for part in parts):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            modules[".".join(parts)] = path
    return modules


def _from_base(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    """The absolute module named by ``from <base> import ...``; None past the top level."""
    if node.level == 0:
        return node.module
    package = module.split(".") if is_package else module.split(".")[:-1]
    keep = len(package) - (node.level - 1)
    if keep <= 0:
        return None
    return ".".join(package[:keep] + ([node.module] if node.module else []))


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """The modules of the tree that one import statement depends on."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in modules]
    base = _from_base(node, module, is_package)
    if base is None:
        return []
    targets = []
    for alias in node.names:
        if f"{base}.{alias.name}" in modules:
            targets.append(f"{base}.{alias.name}")
        elif base in modules:
            targets.append(base)
    return targets


def _missing(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str], tops: set[str]) -> list[str]:
    """The modules that one import statement names inside the tree's top-level packages but that do not exist.

    known holds every module of the tree and every package directory above one.
    """
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = _from_base(node, module, is_package)
        if base is None:
            return []
        names = [base]  # X.Y a module means X is one too; otherwise Y is a name in X
    return [name for name in names if name.split(".")[0] in tops and name not in known]


def _scan(root: Path) -> tuple[list[str], list[Import], list[Import]]:
    """Every module under root, every import of one by another, and every import of a missing one."""
    modules = _module_files(root)
    known = {".".join(module.split(".")[:end]) for module in modules for end in range(1, module.count(".") + 2)}
    tops = {module.split(".")[0] for module in modules}
    sites = []
    missing = set()
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                sites.extend(
                    Import(module, target, path, node.lineno)
                    for target in _targets(node, module, is_package, modules)
                )
                missing.update(
                    Import(module, name, path, node.lineno)
                    for name in _missing(node, module, is_package, known, tops)
                )
    return list(modules), sorted(sites, key=_order), sorted(missing, key=_order)


def scan(root: Path) -> tuple[list[str], list[Import]]:
    """Every module under root, and every import of one of them by another, with its line."""
    modules, sites, _ = _scan(root)
    return modules, sites


def missing_modules(root: Path) -> list[Import]:
    """Every import of a module that would lie in one of the tree's top-level packages but does not exist."""
    return _scan(root)[2]


def _graph(modules: list[str], sites: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for site in sites:
        graph[site.importer].add(site.imported)
    return graph


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the tree it imports (every module under root is a key)."""
    return _graph(*scan(root))


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (iterative Tarjan), each sorted, in order of first member."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    work: list[tuple[str, Iterator[str]]] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        work.append((node, iter(sorted(graph.get(node, ())))))

    for start in sorted(graph):
        if start not in index:
            visit(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    visit(child)
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    found.append(sorted(component))
    return sorted(found)


def _shortest(graph: dict[str, set[str]], source: str, targets: set[str], within: set[str]) -> list[str]:
    """Shortest path of at least one step from source to one of targets, staying within."""
    previous: dict[str, str] = {}
    frontier = [source]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, set()) & within):
                if child in targets:
                    path = [child, node]
                    while path[-1] != source:
                        path.append(previous[path[-1]])
                    return path[::-1]
                if child not in previous and child != source:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise ValueError(f"no path from {source} to {sorted(targets)}")


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each circle of the graph as a closed path through all its modules, first module repeated last.

    A circle is a strongly connected component of more than one module, or a module that
    imports itself. The path starts at the component's first module (by name) and goes by
    shortest steps to the nearest module not yet on it, then back to the start.
    """
    found = []
    for component in _components(graph):
        start = component[0]
        if len(component) == 1 and start not in graph.get(start, set()):
            continue
        members = set(component)
        path = [start]
        while unvisited := members - set(path):
            path += _shortest(graph, path[-1], unvisited, members)[1:]
        found.append(path + _shortest(graph, path[-1], {start}, members)[1:])
    return found


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_breaks(sites: list[Import], rules: list[tuple[str, str, str]] = RULES) -> list[tuple[Import, str]]:
    """Each import that a rule forbids, with the rule's reason."""
    return [
        (site, reason)
        for site in sites
        for importer, forbidden, reason in rules
        if _under(site.importer, importer) and _under(site.imported, forbidden)
    ]


def _shown(path: Path) -> Path:
    """The path relative to the working directory where it lies below it."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=DEFAULT_ROOT, help="source root (default: %(default)s)")
    root = parser.parse_args(argv).root
    modules, sites, missing = _scan(root)
    if not modules:
        print(f"no Python modules under {root}", file=sys.stderr)
        return 2
    graph = _graph(modules, sites)
    found = circles(graph)
    breaks = layer_breaks(sites)
    for circle in found:
        print("circle: " + " -> ".join(circle))
    for site, reason in breaks:
        print(f"{_shown(site.path)}:{site.line}: {site.importer} imports {site.imported} ({reason})")
    for site in missing:
        print(f"{_shown(site.path)}:{site.line}: {site.importer} imports {site.imported} (no such module)")
    if found or breaks or missing:
        return 1
    edges = sum(len(targets) for targets in graph.values())
    print(f"ok: {len(graph)} modules, {edges} imports, no circles, no layer breaks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
