"""``shardkit map build|show|route|diff``."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.table import Table

from .._files import write_bytes_atomic
from ..config import Project, load_project
from ..config.build import build_signed
from ..protocol import check_key
from ..sharding.diff import MapDiff, diff_maps, slot_ranges
from ..sharding.shardmap import ShardMap
from .output import (
    console,
    emit_json,
    iso,
    json_option,
    keys_option,
    newest_map,
    open_map,
)

_PATH = click.Path(path_type=Path)
_TARGET_HELP = "TARGET is a map file, or a project directory (meaning its current map)."


@click.group("map")
def group() -> None:
    """Build, inspect, route with and compare signed shard maps."""


@group.command("build")
@click.argument("project_dir", type=_PATH)
@click.option(
    "--out",
    type=_PATH,
    help="Where to write the signed map [default: PROJECT_DIR/.shardkit/map.skm].",
)
@click.option(
    "--previous", type=_PATH, help="The map this one replaces [default: OUT, if it exists]."
)
@click.option("--fresh", is_flag=True, help="Ignore any previous map: version 1, a new table.")
@json_option
def build(
    project_dir: Path, out: Path | None, previous: Path | None, fresh: bool, json_: bool
) -> None:
    """Plan the project's next shard map, sign it and write it.

    With a previous map only the slots that must move, move; the version goes up by one and
    the epochs of exactly the shards whose slots changed are bumped.
    """
    project = load_project(project_dir)
    out = out or project.map_path
    _check_out(out)
    prev_path = None if fresh else (previous or _previous(project, out))
    prev = open_map(prev_path, project.keys_dir, allow_expired=True) if prev_path else None
    shard_map, data = build_signed(project, prev)
    write_bytes_atomic(out, data)
    diff = diff_maps(prev, shard_map) if prev else None
    if json_:
        emit_json(
            {
                "path": str(out),
                "bytes": len(data),
                "map": shard_map.to_dict(),
                "diff": diff.to_dict() if diff else None,
            }
        )
        return
    console.print(
        f"wrote [bold]{out}[/] ({len(data):,} bytes): version {shard_map.version}, "
        f"{len(shard_map.shards)} shards, expires {iso(shard_map.expires_at)}"
    )
    _print_shards(shard_map)
    if diff:
        _print_diff(diff)


@group.command("show", epilog=_TARGET_HELP)
@click.argument("target", type=_PATH)
@keys_option
@click.option("--tables", is_flag=True, help="With --json, include every slot's owner.")
@json_option
def show(target: Path, keys: Path | None, tables: bool, json_: bool) -> None:
    """Verify a map and show its shards, regions and residency rules."""
    shard_map = open_map(target, keys, allow_expired=True)
    if json_:
        emit_json(shard_map.to_dict(tables=tables))
        return
    console.print(
        f"project [bold]{shard_map.project}[/]  version {shard_map.version}  "
        f"hash {shard_map.hash}  {shard_map.slot_count:,} slots per group"
    )
    console.print(f"created {iso(shard_map.created_at)}  expires {iso(shard_map.expires_at)}")
    if shard_map.expires_at <= time.time():
        console.print("[bold red]this map has expired: clients refuse it[/]")
    rules = ", ".join(f"{p!r} -> {j}" for p, j in shard_map.residency_rules) or "none"
    default = shard_map.default_jurisdiction or "none (unmatched keys fail)"
    console.print(f"residency: rules {rules}; default {default}")
    _print_shards(shard_map)


@group.command("route", epilog=_TARGET_HELP)
@click.argument("target", type=_PATH)
@click.argument("key", nargs=-1, required=True)
@click.option("--jurisdiction", help="Tag the keys with this jurisdiction.")
@keys_option
@json_option
def route(
    target: Path, key: tuple[str, ...], jurisdiction: str | None, keys: Path | None, json_: bool
) -> None:
    """Route keys: jurisdiction, slot, owning shard, region, epoch and failover order.

    A key is a non-empty UTF-8 string of at most 1,024 bytes, as the shards require."""
    for k in key:
        check_key(k)
    shard_map = open_map(target, keys)
    rows = [_route_row(shard_map, k, jurisdiction) for k in key]
    if json_:
        emit_json({"version": shard_map.version, "routes": rows})
        return
    table = Table(
        "key",
        "jurisdiction",
        "slot",
        "shard",
        "region",
        "epoch",
        "failover",
        title=f"map version {shard_map.version}",
    )
    for r in rows:
        table.add_row(
            r["key"],
            r["jurisdiction"],
            str(r["slot"]),
            r["shard"],
            r["region"],
            str(r["epoch"]),
            " ".join(r["failover"]),
        )
    console.print(table)


@group.command("diff")
@click.argument("old", type=_PATH)
@click.argument("new", type=_PATH)
@keys_option
@json_option
def diff(old: Path, new: Path, keys: Path | None, json_: bool) -> None:
    """List every slot that moves from map OLD to map NEW, with source and destination."""
    result = diff_maps(
        open_map(old, keys, allow_expired=True), open_map(new, keys, allow_expired=True)
    )
    if json_:
        emit_json(result.to_dict())
        return
    _print_diff(result)


def _check_out(out: Path) -> None:
    """Refuse an output path that cannot be a file before anything is read or built."""
    if out.is_dir():
        raise click.ClickException(
            f"cannot write the map to {out}: it is a directory — pass a "
            f"file path such as {out / 'map.skm'}"
        )
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise click.ClickException(
            f"cannot write the map to {out}: {parent} is a file, not a "
            f"directory — pass --out with a path inside a directory"
        )


def _previous(project: Project, out: Path) -> Path | None:
    """The map the new one follows: OUT if it exists, else the project's newest map (from
    `map build` or a deploy), so versions keep moving forward."""
    if out.exists():
        return out
    return project.root if newest_map(project)[1] is not None else None


def _route_row(shard_map: ShardMap, key: str, jurisdiction: str | None) -> dict[str, object]:
    owner = shard_map.route(key, jurisdiction)
    failover = shard_map.preference_list(key, jurisdiction=jurisdiction)[1:]
    return {
        "key": key,
        "jurisdiction": owner.jurisdiction,
        "slot": shard_map.slot(key),
        "shard": owner.id,
        "region": owner.region,
        "epoch": owner.epoch,
        "failover": [s.id for s in failover],
    }


def _print_shards(shard_map: ShardMap) -> None:
    counts = shard_map.slot_counts()
    table = Table("shard", "group", "jurisdiction", "region", "weight", "slots", "share", "epoch")
    for s in shard_map.shards:
        share = counts[s.id] / shard_map.slot_count
        table.add_row(
            s.id,
            s.group,
            s.jurisdiction,
            s.region,
            f"{s.weight:g}",
            f"{counts[s.id]:,}",
            f"{share:.2%}",
            str(s.epoch),
        )
    console.print(table)


def _print_diff(d: MapDiff) -> None:
    console.print(
        f"version {d.old_version} -> {d.new_version}: {len(d.moves):,} slot(s) move, "
        f"{d.replica_changes:,} replica entries change"
    )
    if d.added or d.removed:
        console.print(
            f"added: {', '.join(d.added) or '-'}   removed: {', '.join(d.removed) or '-'}"
        )
    if d.epochs:
        console.print("epochs: " + ", ".join(f"{k} {a}->{b}" for k, (a, b) in d.epochs.items()))
    if d.moves:
        table = Table("from", "to", "slots", "which")
        for source, dest, n in d.by_pair():
            slots = sorted(m.slot for m in d.moves if (m.source, m.destination) == (source, dest))
            table.add_row(
                source or "(new group)", dest or "(removed group)", f"{n:,}", _ranges(slots)
            )
        console.print(table)


def _ranges(slots: list[int], limit: int = 6) -> str:
    """``0-3, 9, 12-14, ...``: the moved slots as contiguous ranges, the first few of them."""
    parts = [f"{a}-{b}" if a != b else str(a) for a, b in slot_ranges(slots)]
    return ", ".join(parts[:limit]) + (f", ... ({len(parts)} ranges)" if len(parts) > limit else "")
