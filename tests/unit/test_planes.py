"""The planes, checked by reading the source: the data plane imports nothing from the control
plane, and shardkit's subpackages import each other without a cycle.

Every import statement of every module is read with ``ast`` - at module level, inside functions
(lazy imports), under ``if TYPE_CHECKING:``, relative and absolute - and resolved to the shardkit
module it names (``from .. import config`` is the module ``shardkit.config``; ``from shardkit
import load_config`` is what the package's lazy ``__getattr__`` table says it is). Nothing is
imported, so a lazy import that a test never reaches is still seen.

The plane rule counts every import, type-only ones too: a data-plane module has no business
naming the control plane even in an annotation. The cycle rule counts the imports that run:
``if TYPE_CHECKING:`` is how a type-only reference back into a subpackage that imports this one
is written, and it never executes. (``test_data_plane_imports`` measures the other side: what a
fresh interpreter really loads.)
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import shardkit

PACKAGE = Path(shardkit.__file__).resolve().parent

#: What serves requests: routing, the proxy, the edge runtime, the map core and the wire protocol.
DATA_PLANE = (
    "shardkit.edge",
    "shardkit.errors",
    "shardkit.protocol",
    "shardkit.proxy",
    "shardkit.routing",
    "shardkit.sharding",
)
#: What builds, deploys and operates it.
CONTROL_PLANE = (
    "shardkit.autoshard",
    "shardkit.aws",
    "shardkit.blueprint",
    "shardkit.blueprints",
    "shardkit.cli",
    "shardkit.config",
    "shardkit.deploy",
    "shardkit.kinds",
    "shardkit.local",
    "shardkit.logs",
    "shardkit.migrate",
    "shardkit.testing",
    "shardkit.traffic",
)
#: Helpers either plane may use: they import nothing of the control plane (checked below).
#: ``keys`` needs only cryptography, which the data plane loads to verify maps anyway.
SHARED = ("shardkit._files", "shardkit.keys")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    path: Path
    line: int
    target: str  # the shardkit module the statement names
    name: str  # as written: "..config.loader.load_project", "shardkit.deploy"
    typing_only: bool = False  # under ``if TYPE_CHECKING:``: never executed


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(module: str, source: str, path: Path, known: dict[str, Path]) -> Iterator[Import]:
    """The shardkit imports of one module's source, wherever they stand in it."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(source, str(path))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node.test)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(
                    module, path, node.lineno, alias.name, alias.name, id(node) in typing_only
                )
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.level, node.module)
            written = "." * node.level + (f"{node.module}." if node.module else "")
            for alias in node.names:
                target = _resolve(base, alias.name, known)
                yield Import(
                    module, path, node.lineno, target, written + alias.name, id(node) in typing_only
                )


def _is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", None)
    return name == "TYPE_CHECKING"


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, name] if name else parts)


def _resolve(base: str, name: str, known: dict[str, Path]) -> str:
    """``from base import name``: the submodule ``base.name`` if there is one; a name of the
    package's public API is the module it is defined in; anything else is ``base`` itself."""
    if f"{base}.{name}" in known:
        return f"{base}.{name}"
    if base == "shardkit" and name in shardkit._WHERE:
        return f"shardkit.{shardkit._WHERE[name]}"
    return base


def _within(module: str, packages: tuple[str, ...]) -> str | None:
    return next((p for p in packages if module == p or module.startswith(p + ".")), None)


def forbidden_imports(known: dict[str, Path], sources: dict[str, str]) -> list[str]:
    """One line per import of a data-plane or shared module that names the control plane."""
    problems = []
    for module, path in known.items():
        if not _within(module, DATA_PLANE + SHARED):
            continue
        for imp in imports_of(module, sources[module], path, known):
            plane = _within(imp.target, CONTROL_PLANE)
            if plane:
                where = path.relative_to(PACKAGE.parent)
                problems.append(
                    f"{where}:{imp.line}: {module} imports {imp.name} ({imp.target}), but "
                    f"{plane} is the control plane; the data plane must not import it"
                )
    return problems


def unit(module: str) -> str | None:
    """The subpackage (or top-level module) a module belongs to; None for the package itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else None


def subpackage_graph(
    known: dict[str, Path], sources: dict[str, str]
) -> dict[str, dict[str, list[str]]]:
    """``{unit: {imported unit: ["path:line", ...]}}`` over every import of every module."""
    graph: dict[str, dict[str, list[str]]] = {}
    for module, path in known.items():
        src = unit(module)
        if src is None:  # the package's own lazy facade names everything on purpose
            continue
        edges = graph.setdefault(src, {})
        for imp in imports_of(module, sources[module], path, known):
            if imp.typing_only:  # never executed: no import cycle through it
                continue
            dst = unit(imp.target) if imp.target.startswith("shardkit.") else None
            if dst is not None and dst != src:
                where = f"{path.relative_to(PACKAGE.parent)}:{imp.line}"
                edges.setdefault(dst, []).append(where)
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Every strongly connected group of more than one unit (Tarjan), members sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(group: list[str], graph: dict[str, dict[str, list[str]]]) -> str:
    edges = [
        f"{a} -> {b} ({graph[a][b][0]})" for a in group for b in group if b in graph.get(a, {})
    ]
    return "import cycle between " + ", ".join(group) + ": " + "; ".join(edges)


@pytest.fixture(scope="module")
def tree() -> tuple[dict[str, Path], dict[str, str]]:
    known = modules()
    return known, {m: p.read_text(encoding="utf-8") for m, p in known.items()}


# -- the rules, on the real tree -----------------------------------------------------------------


def test_every_module_belongs_to_a_plane(tree: tuple[dict[str, Path], dict[str, str]]) -> None:
    """A new subpackage must be placed deliberately, or the rules below would not cover it."""
    known, _ = tree
    placed = DATA_PLANE + CONTROL_PLANE + SHARED
    assert [m for m in known if m != "shardkit" and not _within(m, placed)] == []


def test_the_data_plane_imports_nothing_from_the_control_plane(
    tree: tuple[dict[str, Path], dict[str, str]],
) -> None:
    known, sources = tree
    problems = forbidden_imports(known, sources)
    assert not problems, "\n".join(problems)


def test_no_import_cycle_between_subpackages(tree: tuple[dict[str, Path], dict[str, str]]) -> None:
    known, sources = tree
    graph = subpackage_graph(known, sources)
    assert "shardkit.sharding" in graph["shardkit.config"]  # the graph sees real imports
    found = cycles(graph)
    assert not found, "\n".join(describe(group, graph) for group in found)


def runtime_closure(start: str, known: dict[str, Path], sources: dict[str, str]) -> set[str]:
    """The shardkit modules importing ``start`` can load: its imports that run (lazy ones too,
    not type-only ones), theirs, and the packages they sit in."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen or module not in known:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += [
            imp.target
            for imp in imports_of(module, sources[module], known[module], known)
            if not imp.typing_only
        ]
    return seen


def test_the_proxy_package_carries_every_module_the_handler_imports(
    tree: tuple[dict[str, Path], dict[str, str]],
) -> None:
    """A shard function runs the copy of shardkit in its code package, the data plane only
    (shardkit.deploy.package). A module missing there fails at import time in Lambda, while a
    development machine may quietly find it in the checkout instead."""
    from shardkit.deploy.package import _shardkit_files

    known, sources = tree
    needed = runtime_closure("shardkit.proxy.handler", known, sources)
    assert {"shardkit.errors", "shardkit.sharding.codec"} <= needed
    packaged = {name for name, _ in _shardkit_files()}
    files = {known[m].relative_to(PACKAGE.parent).as_posix() for m in needed}
    assert sorted(files - packaged) == []


# -- the checks can fail -------------------------------------------------------------------------


def _with(module: str, source: str, tree: tuple[dict[str, Path], dict[str, str]]) -> list[str]:
    known, sources = tree
    return forbidden_imports(known, {**sources, module: source})


@pytest.mark.parametrize(
    ("statement", "named"),
    [
        ("from ..config.loader import load_project", "..config.loader.load_project"),
        ("from .. import deploy", "..deploy (shardkit.deploy)"),
        ("import shardkit.local.server", "shardkit.local.server"),
        ("from shardkit import load_config", "shardkit.load_config"),
        ("from shardkit.cli import main", "shardkit.cli.main"),
    ],
)
def test_a_forbidden_import_is_named_with_its_line(
    tree: tuple[dict[str, Path], dict[str, str]], statement: str, named: str
) -> None:
    source = f'"""A data-plane module."""\n\n\ndef lazy() -> None:\n    {statement}\n'
    (problem,) = _with("shardkit.routing.client", source, tree)
    assert problem.startswith("shardkit/routing/client.py:5: shardkit.routing.client imports ")
    assert named in problem and "is the control plane" in problem


def test_a_shared_module_may_not_import_the_control_plane(
    tree: tuple[dict[str, Path], dict[str, str]],
) -> None:
    (problem,) = _with("shardkit.keys", "from .config import load_project\n", tree)
    assert problem.startswith("shardkit/keys.py:1: shardkit.keys imports .config.load_project")


def test_a_cycle_is_found_and_named() -> None:
    graph = {
        "shardkit.a": {"shardkit.b": ["shardkit/a/x.py:3"]},
        "shardkit.b": {"shardkit.c": ["shardkit/b/y.py:7"]},
        "shardkit.c": {"shardkit.a": ["shardkit/c/z.py:9"]},
        "shardkit.d": {"shardkit.a": ["shardkit/d.py:1"]},
    }
    (group,) = cycles(graph)
    assert group == ["shardkit.a", "shardkit.b", "shardkit.c"]
    assert describe(group, graph) == (
        "import cycle between shardkit.a, shardkit.b, shardkit.c: "
        "shardkit.a -> shardkit.b (shardkit/a/x.py:3); shardkit.b -> shardkit.c "
        "(shardkit/b/y.py:7); shardkit.c -> shardkit.a (shardkit/c/z.py:9)"
    )


def test_type_only_imports_count_for_the_planes_not_for_cycles(
    tree: tuple[dict[str, Path], dict[str, str]],
) -> None:
    known, sources = tree
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..deploy import client\n"
    )
    (imp,) = [
        i
        for i in imports_of(
            "shardkit.routing.client", source, known["shardkit.routing.client"], known
        )
        if i.target.startswith("shardkit.")
    ]
    assert (imp.target, imp.line, imp.typing_only) == ("shardkit.deploy.client", 3, True)
    (problem,) = _with("shardkit.routing.client", source, tree)
    assert "shardkit/routing/client.py:3:" in problem
    graph = subpackage_graph(known, {**sources, "shardkit.routing.client": source})
    assert "shardkit.deploy" not in graph["shardkit.routing"]


#: What Lambda's Python runtime provides besides the standard library.
LAMBDA_RUNTIME = frozenset({"boto3", "botocore"})


def third_party_roots(
    modules_: set[str], known: dict[str, Path], sources: dict[str, str]
) -> set[str]:
    """The top-level non-shardkit, non-standard-library packages ``modules_`` import (run-time
    imports only)."""
    import sys

    return {
        imp.target.split(".")[0]
        for module in modules_
        for imp in imports_of(module, sources[module], known[module], known)
        if not imp.typing_only
        and not imp.target.startswith("shardkit")
        and imp.target.split(".")[0] not in (*sys.stdlib_module_names, "__future__")
    }


def test_the_controller_package_carries_every_module_and_dependency_it_imports(
    tree: tuple[dict[str, Path], dict[str, str]],
) -> None:
    """The auto-shard controller function runs from an autoshard project's package: all of
    shardkit, and the vendored dependencies of the data plane and the controller. Its imports on
    AWS (the local cloud's modules run only beside the project, with this machine's packages)
    must all be in it, or be what Lambda's runtime provides."""
    from importlib.metadata import packages_distributions, requires

    from shardkit.deploy.package import _shardkit_files
    from shardkit.deploy.vendor import requirements

    known, sources = tree
    needed = runtime_closure("shardkit.autoshard.function", known, sources)
    assert {"shardkit.autoshard.carried", "shardkit.deploy.engine"} <= needed
    packaged = {name for name, _ in _shardkit_files(control=True)}
    files = {known[m].relative_to(PACKAGE.parent).as_posix() for m in needed}
    assert sorted(files - packaged) == []

    on_aws = {m for m in needed if not _within(m, ("shardkit.local",))}
    roots = third_party_roots(on_aws, known, sources)
    assert {"pydantic", "numpy", "msgpack"} <= roots  # the check sees real imports

    def norm(name: str) -> str:  # a distribution name as PEP 503 compares them
        return re.sub(r"[-_.]+", "-", name).lower()

    distributions = packages_distributions()
    vendored = {norm(n) for n in requirements(control=True)}
    # pip fetches what the vendored distributions require along with them
    brought = {
        norm(re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0])
        for n in vendored
        for r in requires(n) or ()
        if "extra ==" not in r
    }
    allowed = vendored | brought | LAMBDA_RUNTIME
    found = {root: distributions.get(root, [root]) for root in roots}
    missing = {
        root: dists for root, dists in found.items() if not {norm(d) for d in dists} & allowed
    }
    assert missing == {}, f"imported on AWS, but neither vendored nor in Lambda: {missing}"
