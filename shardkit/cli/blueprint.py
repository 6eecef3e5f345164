"""``shardkit blueprint render|list|kinds``: the CloudFormation view of a project's blueprint,
the shipped definitions, and the resource kinds a definition may use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from .. import kinds
from .._files import write_bytes_atomic
from ..blueprint import available, load_definition
from ..blueprint.cloudformation import blueprint_for_render, render
from ..config import Project, load_project
from ..config.build import build_map
from ..deploy.package import build_package
from ..sharding.shardmap import ShardMap
from .output import console, emit_json, json_option, newest_map, open_map

_PATH = click.Path(path_type=Path)
_SUFFIX = ".template.json"


@click.group("blueprint")
def group() -> None:
    """Render blueprints as CloudFormation; list the shipped ones and the resource kinds."""


@group.command("render")
@click.argument("project_dir", type=_PATH)
@click.option(
    "--out",
    type=_PATH,
    required=True,
    help="Directory for the templates, one <region>.template.json per region.",
)
@click.option(
    "--blueprint",
    "name",
    default=None,
    help="A shipped blueprint's name, or a path to a .toml definition "
    "[default: the project's proxy.blueprint].",
)
@json_option
def render_(project_dir: Path, out: Path, name: str | None, json_: bool) -> None:
    """Render the project's blueprint as CloudFormation templates, one per region.

    Uses the project's newest map - the one `shardkit map build` wrote or the last one a deploy
    published, whichever has the higher version - and says which file and version; with
    neither, it plans a map in memory. The templates are account-independent: account and
    partition are CloudFormation pseudo parameters.
    """
    project = load_project(project_dir)
    _check_out(out)
    shard_map, source = _current_map(project)
    code = build_package(project).artifact
    blueprint = blueprint_for_render(project, shard_map, code, blueprint=name)
    templates = render(blueprint)
    rows = []
    for region, template in templates.items():
        path = out / f"{region}{_SUFFIX}"
        text = json.dumps(template, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        write_bytes_atomic(path, text.encode("utf-8"))
        shards = template["Metadata"]["shardkit"]["shards"]
        rows.append(
            {
                "region": region,
                "shards": len(shards),
                "resources": len(template["Resources"]),
                "file": str(path),
            }
        )
    stale = sorted(
        str(p) for p in out.glob(f"*{_SUFFIX}") if p.name.removesuffix(_SUFFIX) not in templates
    )
    if json_:
        emit_json(
            {
                "project": blueprint.project,
                "blueprint": blueprint.name,
                "map": {"version": shard_map.version, "source": source},
                "code": {"key": code.key, "sha256": code.sha256},
                "templates": rows,
                "stale": stale,
            }
        )
        return
    _print_rendered(blueprint.name, shard_map.version, source, rows, stale)


@group.command("list")
@json_option
def list_(json_: bool) -> None:
    """List the blueprint definitions shipped with shardkit."""
    rows = [
        {"name": n, "description": load_definition(n).get("description", "")} for n in available()
    ]
    if json_:
        emit_json(rows)
        return
    table = Table("name", "description")
    for row in rows:
        table.add_row(row["name"], row["description"])
    console.print(table)


@group.command("kinds")
@click.option(
    "--markdown", is_flag=True, help="Print the reference of docs/blueprints.md (Markdown)."
)
@json_option
def kinds_(markdown: bool, json_: bool) -> None:
    """List the resource kinds a blueprint definition may use, in apply order, with their
    properties (* required) and the properties that name other resources."""
    entries = kinds.reference()
    if json_:
        emit_json(entries)
        return
    if markdown:
        click.echo(kinds.markdown(), nl=False)
        return
    table = Table("kind", "CloudFormation", "properties", "names")
    for e in entries:
        props = ", ".join(p["name"] + ("*" if p["required"] else "") for p in e["props"])
        refs = ", ".join(f"{r['prop']} → {r['kind']}" for r in e["refs"])
        table.add_row(e["kind"], e["cloudformation"], props, refs)
    console.print(table)
    console.print("* required; docs/blueprints.md describes every property")


_PLANNED = "planned in memory"


def _current_map(project: Project) -> tuple[ShardMap, str]:
    """The project's newest map (built or deployed) and the file it came from; a fresh
    in-memory plan if there is none."""
    where, data = newest_map(project)
    if data is not None:
        return open_map(project.root, None, allow_expired=True), where
    return build_map(project.config), _PLANNED


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise click.ClickException(
            f"cannot write templates to {out}: it is a file — pass a directory with --out"
        )


def _print_rendered(
    name: str, version: int, source: str, rows: list[dict[str, Any]], stale: list[str]
) -> None:
    where = "no map built or deployed yet: " + source if source == _PLANNED else f"from {source}"
    console.print(f"blueprint [bold]{name}[/] for map version {version} ({escape(where)})")
    table = Table("region", "shards", "resources", "file")
    for row in rows:
        table.add_row(row["region"], str(row["shards"]), str(row["resources"]), row["file"])
    console.print(table)
    for path in stale:
        console.print(
            f"[yellow]note:[/] {path} is from an earlier render; this blueprint has no "
            f"resources in its region any more"
        )
