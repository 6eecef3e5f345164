"""What the CLI shows of a live migration, and ``shardkit cleanup``.

Before an apply, :func:`show_summary` prints (or emits as JSON) what the plan's migration moves per
jurisdiction and region (slots switched in place, slots copied across regions, the items and bytes under them).
During it, :func:`event_printer` prints each progress event of the ``migrate`` steps as one line
- or, with ``--json``, as one JSON object per line on stderr (stdout keeps the one result
document). ``shardkit status`` adds :func:`show_status`: a migration an unfinished apply left,
and the rollback window left for each batch of source copies.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.table import Table

from ..deploy.plan import Plan
from .output import console

__all__ = ["event_printer", "has_migration", "show_status", "show_summary"]


def has_migration(plan: Plan) -> bool:
    return any(s.action == "migrate" and s.props.get("phase") == "cutover" for s in plan.steps)


def show_summary(rows: list[dict[str, Any]], json_: bool) -> None:
    """What the migration moves, before it is applied: a table, or (``--json``) one JSON line on
    stderr, ``{"event": "migration-plan", "rows": [...]}``."""
    if json_:
        sys.stderr.write(json.dumps({"event": "migration-plan", "rows": rows}) + "\n")
        return
    if not rows:
        return
    slots = sum(r["in_place"] + r["copied"] for r in rows)
    items = sum(r["items"] for r in rows)
    console.print(
        f"migration: {slots} slots change owner; {items:,} items will be copied across regions"
    )
    table = Table(
        "jurisdiction", "region", "groups", "slots in place", "slots copied", "from", "items", "MB"
    )
    for r in rows:
        table.add_row(
            r["jurisdiction"],
            r["region"],
            ", ".join(r["groups"]),
            str(r["in_place"]),
            str(r["copied"]),
            ", ".join(r["from"]) or "-",
            f"{r['items']:,}",
            f"{r['bytes'] / 1e6:.2f}",
        )
    console.print(table)


def event_printer(json_: bool) -> Any:
    """The ``events`` callable of a Deployer: one line per migration event."""

    def emit(event: dict[str, Any]) -> None:
        if json_:
            sys.stderr.write(json.dumps({"event": "migration", **event}) + "\n")
            sys.stderr.flush()
            return
        console.print(f"  {event['phase']:<9} {event['group']}@{event['region']}: {_words(event)}")

    return emit


def _words(e: dict[str, Any]) -> str:
    phase = e["phase"]
    if phase == "prepare":
        return f"{e['shards']} shards warmed ({e['cold_starts']} cold), {e['slots']} slots to move"
    if phase == "copy":
        return (
            f"{e['slots']}/{e['slots_total']} slots, {e['items']:,}/{e['items_total']:,} items, "
            f"{e['bytes'] / 1e6:.2f} MB copied"
        )
    if phase == "fence":
        return f"{e['slots']}/{e['slots_total']} slots fenced (writes to them wait)"
    if phase == "catch-up":
        return f"{e['items']:,} items changed since the copy, caught up in {e['lag_s']:.2f}s"
    if phase == "switch":
        window = f", fenced for {e['fenced_s']:.2f}s" if e.get("fenced_s") is not None else ""
        return f"{e['slots']} slots switched{window}"
    if phase == "guard":
        rate = f"{e['errors']:g}/{e['requests']:g} errors ({e['error_rate']:.1%})"
        return f"{e.get('event', 'ok')} before {e.get('before', '?')}: {rate}"
    if phase == "aborted":
        return (
            f"ABORTED ({e['reason']}): {e['given_back']} slots given back, "
            f"{e['switched']} already switched"
        )
    if phase == "cleanup":
        return f"{e['items']:,} source items deleted from {e['slots']} slots"
    return json.dumps(e)


def show_status(info: dict[str, Any]) -> None:
    running = info.get("migration")
    if running:
        last = running.get("last") or {}
        console.print(
            f"[yellow]migration to map version {running['version']} in progress[/] "
            f"(plan {running['plan_id']}); last: {last.get('phase', '-')} "
            f"{last.get('group', '')}@{last.get('region', '')} — resume with the same apply or "
            "`shardkit deploy`, or `shardkit rollback`"
        )
    for c in info.get("cleanups", []):
        left = c["window_left_s"]
        when = f"{left / 60:.0f} min of rollback window left" if left else "cleanup due"
        console.print(
            f"source copies of group {c['group']} slots {c['slots']} (map version "
            f"{c['version']}) in {', '.join(c['sources'])}: {when}"
        )
