"""The registry of resource kinds: found, checked and ordered, with no table to keep.

Every module of :mod:`shardkit.kinds` whose name does not start with ``_`` is a kind module:
it defines one :class:`KindSpec` subclass whose ``name`` is the module's name. The registry
imports them on first use, refuses an incomplete kind (naming it and the part it lacks), and
orders kinds by their references: a stable topological order (:mod:`graphlib`, ties broken by
name), so a kind always comes after every kind it names. Plans create in that order and delete
in reverse.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from graphlib import CycleError, TopologicalSorter
from types import ModuleType
from typing import Any

from ._spec import KindSpec, problems_of

__all__ = ["apply_order", "discover", "get", "names", "problems", "rank", "specs"]


def _modules() -> list[ModuleType]:
    """The kind modules: every module of this package whose name does not start with ``_``."""
    from .. import kinds

    return [
        importlib.import_module(f"{kinds.__name__}.{m.name}")
        for m in sorted(pkgutil.iter_modules(kinds.__path__), key=lambda m: m.name)
        if not m.name.startswith("_")
    ]


def _classes(module: ModuleType) -> list[type[KindSpec[Any]]]:
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, KindSpec) and obj.__module__ == module.__name__
    ]


def discover() -> list[type[KindSpec[Any]]]:
    """The kind classes of the kind modules, unchecked, by module name."""
    return [cls for module in _modules() for cls in _classes(module)]


def problems() -> list[str]:
    """Everything wrong with the kinds, one line each (empty when all are complete)."""
    out = []
    for module in _modules():
        label = module.__name__.rpartition(".")[2]
        count = len(_classes(module))
        if count != 1:
            out.append(f"{label}: a kind module defines one KindSpec subclass, not {count}")
    classes = discover()
    known = {getattr(c, "name", "") for c in classes}
    for cls in classes:
        label = getattr(cls, "name", cls.__name__)
        if label != cls.__module__.rpartition(".")[2]:
            out.append(f"{label}: the kind's name must be its module's name")
        out += problems_of(cls)
        out += [
            f"{label}: ref {ref.prop!r} names unknown kind {ref.kind!r}"
            for ref in cls.refs
            if ref.kind not in known
        ]
    if not out:
        try:
            apply_order(classes)
        except CycleError as exc:
            out.append(f"references form a cycle: {' -> '.join(exc.args[1])}")
    return out


def apply_order(classes: list[type[KindSpec[Any]]]) -> list[str]:
    """Kind names, each after every kind it refers to; ties in name order."""
    graph = TopologicalSorter({c.name: {ref.kind for ref in c.refs} for c in classes})
    graph.prepare()
    order: list[str] = []
    while graph.is_active():
        ready = sorted(graph.get_ready())
        order += ready
        graph.done(*ready)
    return order


@functools.cache
def _registry() -> dict[str, KindSpec[Any]]:
    found = problems()
    if found:
        raise TypeError("incomplete resource kinds: " + "; ".join(found))
    classes = discover()
    by_name = {cls.name: cls() for cls in classes}
    return {name: by_name[name] for name in apply_order(classes)}


def get(kind: str) -> KindSpec[Any]:
    """The kind called ``kind``; :class:`ValueError` naming the known ones if there is none."""
    try:
        return _registry()[kind]
    except KeyError:
        raise ValueError(f"unknown resource kind {kind!r}; known: {', '.join(names())}") from None


def specs() -> tuple[KindSpec[Any], ...]:
    """Every kind, in apply order."""
    return tuple(_registry().values())


def names() -> tuple[str, ...]:
    """Every kind's name, in apply order."""
    return tuple(_registry())


def rank(kind: str) -> int:
    """``kind``'s position in the apply order."""
    get(kind)  # a ValueError if it is not a kind
    return _ranks()[kind]


@functools.cache
def _ranks() -> dict[str, int]:
    return {name: i for i, name in enumerate(_registry())}
