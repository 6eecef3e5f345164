"""The kinds' reference, made from the registry: as data (``shardkit blueprint kinds --json``)
and as the Markdown that docs/blueprints.md holds (a test keeps the two equal)."""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ._registry import specs
from ._spec import KindSpec, Props

__all__ = ["markdown", "reference"]


def reference() -> list[dict[str, Any]]:
    """One entry per kind, in apply order: what a blueprint definition may write for it."""
    return [_entry(kind) for kind in specs()]


def _entry(kind: KindSpec[Any]) -> dict[str, Any]:
    return {
        "kind": kind.name,
        "cloudformation": kind.cfn_type,
        "logical_id_prefix": kind.cfn_prefix,
        "name_limit": kind.name_limit,
        "retain": kind.retain,
        "bootstrap": kind.bootstrap,
        "refs": [
            {"prop": ref.prop, "kind": ref.kind, "name": ref.name, "required": ref.required}
            for ref in kind.refs
        ],
        "props": [_prop(name, field) for name, field in kind.props.model_fields.items()],
    }


def _prop(name: str, field: FieldInfo) -> dict[str, Any]:
    required = field.is_required()
    default = None if required else field.get_default(call_default_factory=True)
    return {
        "name": name,
        "type": _type(field.annotation),
        "required": required,
        "default": default,
        "description": field.description or "",
    }


def _type(annotation: Any) -> str:
    """A property's type as a definition author reads it."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in args if a is not type(None))
    if origin is Literal:
        values = [f"`{json.dumps(a)}`" for a in args]
        return values[0] if len(values) == 1 else "one of " + ", ".join(values)
    if origin is dict:
        return "table of strings" if _type(args[1]) == "string" else "table"
    if origin is typing.Annotated:
        return _type(args[0])
    if isinstance(annotation, type) and issubclass(annotation, Props):
        return "table {" + ", ".join(annotation.model_fields) + "}"
    names = {bool: "bool", int: "integer", float: "number", str: "string"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def markdown() -> str:
    """The reference as Markdown: a heading and a property table per kind."""
    return "\n".join(_kind_markdown(entry) for entry in reference())


def _kind_markdown(e: dict[str, Any]) -> str:
    facts = [f"`{e['cloudformation']}`", f"logical ids `{e['logical_id_prefix']}…`"]
    if e["name_limit"]:
        facts.append(f"name ≤ {e['name_limit']} characters")
    if e["retain"]:
        facts.append("kept on destroy unless `--delete-data`")
    if e["bootstrap"]:
        facts.append("created by `shardkit bootstrap`")
    lines = [f"#### `{e['kind']}`", "", " · ".join(facts) + "."]
    if e["refs"]:
        refs = ", ".join(_ref_markdown(r) for r in e["refs"])
        lines.append(f"Names other resources: {refs}.")
    lines += ["", "| property | type | default | meaning |", "|---|---|---|---|"]
    for p in e["props"]:
        default = "required" if p["required"] else _toml(p["default"])
        lines.append(f"| `{p['name']}` | {p['type']} | {default} | {p['description']} |")
    return "\n".join(lines) + "\n"


def _ref_markdown(r: dict[str, Any]) -> str:
    text = f"`{r['prop']}` → `{r['kind']}`"
    if r["name"]:
        text += f" named `{r['name']}`"
    return text if r["required"] else text + " (if the blueprint has it)"


def _toml(value: Any) -> str:
    if value is None or value is PydanticUndefined:
        return "none"
    return f"`{json.dumps(value)}`"
